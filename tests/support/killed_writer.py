"""A writer that a test kills: ``python killed_writer.py '{"op": ..., ...}'`` opens the registry
(LORAREG_* from its environment), prints ``ready``, waits for a line on stdin, then runs one
operation slowly enough (``pause`` seconds per progress step) that a ``kill -9`` lands inside it.

Ops: add_base (path, name), add_adapter (path, name; base llama), merge (weight of chat; name,
default "m"; keep), rebuild / export (dest) / push (repo) of ``ref`` (default kept@1).
``import_torch``: import it before ``ready``, so the kill points fall in the work, not the import.
It imports only lorareg and the standard library, so it runs as a script from any folder."""

import json
import sys
import time


def main() -> None:
    args = json.loads(sys.argv[1])
    if args.get("import_torch"):
        import torch  # noqa: F401
    from lorareg import Registry

    reg = Registry.open()
    slow = lambda *a: time.sleep(args.get("pause", 0.02))  # noqa: E731
    print("ready", flush=True)
    sys.stdin.readline()
    op, ref = args["op"], args.get("ref", "kept@1")
    if op == "add_base":
        reg.add_base(path=args["path"], name=args["name"], progress=slow)
    elif op == "add_adapter":
        reg.add_adapter(path=args["path"], base="llama", name=args["name"], progress=slow)
    elif op == "merge":
        reg.merge(base="llama", adapters=[f"chat:{args['weight']}"], name=args.get("merge_name", "m"),
                  keep=args.get("keep", "files"), progress=slow)
    elif op == "rebuild":
        reg.rebuild(ref=ref, keep_files=True, progress=slow)
    elif op == "export":
        reg.export(ref=ref, dest=args["dest"], progress=slow)
    elif op == "push":
        reg.push(ref=ref, repo=args.get("repo", "alice/crash"))
    print("done", flush=True)


if __name__ == "__main__":
    main()
