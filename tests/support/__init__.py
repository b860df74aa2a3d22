"""What the tests share: tiny models and real PEFT adapters, the Hub look-alike server and its helpers."""
