"""huggingface_hub failures as one-line HubErrors that say what to do next (kept apart from
hub.py so the transfer logic reads without the error table)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lorareg.errors import HubError, LoraregError


@contextmanager
def translated(**context: Any) -> Iterator[None]:
    try:
        yield
    except LoraregError:
        raise
    except Exception as exc:
        err = to_hub_error(exc, **context)
        if err is None:  # not a Hub failure: a bug, keep its traceback
            raise
        raise err from exc


def to_hub_error(exc: BaseException, *, repo_id: str, endpoint: str, revision: str | None, token: str | None,
                  offline: bool = False, push: bool = False) -> HubError | None:
    """The one-line HubError for the first Hub failure in `exc`'s chain, or None."""
    from huggingface_hub import errors as hf

    for e in _chain(exc):
        if isinstance(e, hf.LocalEntryNotFoundError):
            if offline:
                msg, hint = (f"{repo_id}@{revision} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
                             "download it once online (unset HF_HUB_OFFLINE), then offline use works")
            else:
                msg, hint = (f"cannot reach the Hub at {endpoint} and {repo_id}@{revision} is not cached",
                             "check the network, or --endpoint / HF_ENDPOINT")
        elif isinstance(e, hf.OfflineModeIsEnabled):
            msg, hint = "the Hub is off limits: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE and rerun"
        elif isinstance(e, hf.LocalTokenNotFoundError):
            msg, hint = "no Hugging Face token", "log in with `hf auth login` or set HF_TOKEN"
        elif isinstance(e, hf.GatedRepoError):
            msg, hint = (f"{repo_id} is gated on the Hub",
                         f"accept its terms at {endpoint}/{repo_id}, then log in (hf auth login or HF_TOKEN)")
        elif isinstance(e, hf.RepositoryNotFoundError):
            msg, hint = (f"{repo_id} not found on {endpoint} (or private to another account)",
                         "check the name; for a private repo log in (hf auth login) or set HF_TOKEN")
        elif isinstance(e, hf.RevisionNotFoundError):
            msg, hint = (f"revision {revision} not found in {repo_id}",
                         "use a branch, tag or commit that exists: hf://ORG/NAME@REVISION")
        elif isinstance(e, hf.HfHubHTTPError):
            status = e.response.status_code if e.response is not None else None
            if status == 401:
                msg, hint = (f"the Hub at {endpoint} rejected the token (401 Unauthorized)",
                             "set a valid token in HF_TOKEN, or run `hf auth login --force`")
            elif status == 403 and push:
                msg, hint = (f"no write access to {repo_id} with this token (403 Forbidden)",
                             f"push to a namespace you own (--repo YOUR_NAME/{repo_id.split('/')[-1]}), "
                             "or use a token with write access to it")
            elif status == 403:
                msg, hint = (f"this token may not read {repo_id} (403 Forbidden)",
                             "use a token with read access to it: hf auth login, or HF_TOKEN")
            elif status == 412:
                msg, hint = f"{repo_id}@{revision} changed while pushing", "rerun lorareg push"
            else:
                detail = (e.server_message or str(e)).strip().splitlines()
                msg = f"the Hub answered {status} for {repo_id}: {detail[0] if detail else type(e).__name__}"
                hint = "rerun the command; files already uploaded are not sent again"
        elif isinstance(e, _transport_errors()):
            msg, hint = (f"cannot reach the Hub at {endpoint} ({type(e).__name__})",
                         "check the network, or point --endpoint / HF_ENDPOINT at a reachable Hub")
        elif isinstance(e, ValueError) and "metadata in README.md" in str(e):
            msg, hint = "the Hub rejected the model card metadata", "check the card's YAML front matter"
        else:
            continue
        if token:
            msg = msg.replace(token, "***")
        return HubError(msg, hint=hint)
    return None


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _transport_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [ConnectionError, TimeoutError]
    for module in ("httpx2", "httpx"):
        try:
            found.append(__import__(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)
