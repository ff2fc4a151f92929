"""A Hub in a temp folder: the HfApi methods `datasets.push_to_hub` and our push call are patched to read
and write `<root>/<repo_id>/…`, and datasets' HfFileSystem is a local filesystem over the same folder.

Everything above those calls — datasets' sharding, Parquet writing, card/metadata merging, our retries
and card merge — runs for real. `fail_next(status, count)` makes the next calls answer an HTTP error.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2
from fsspec.implementations.local import LocalFileSystem
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError


def _error(cls, status: int, message: str, headers: dict | None = None):
    response = httpx2.Response(status, headers=headers or {}, request=httpx2.Request("POST", "https://hub.invalid/api"))
    return cls(message, response=response)


@dataclass
class FakeHub:
    root: Path
    private: dict[str, bool] = field(default_factory=dict)
    commits: list[dict[str, Any]] = field(default_factory=list)
    failures: list[tuple[int, dict]] = field(default_factory=list)
    tokens_seen: list[str | None] = field(default_factory=list)
    _staged: dict[int, bytes] = field(default_factory=dict)
    _sha: Any = field(default_factory=lambda: itertools.count(1))

    def fail_next(self, status: int, count: int = 1, retry_after: str | None = None, message: str | None = None) -> None:
        self.failures += [(status, {"retry-after": retry_after} if retry_after else {}, message)] * count

    def _maybe_fail(self) -> None:
        if self.failures:
            status, headers, message = self.failures.pop(0)
            raise _error(HfHubHTTPError, status, message or f"{status} injected by FakeHub", headers)

    def repo(self, repo_id: str) -> Path:
        return self.root / repo_id

    # --- HfApi methods --------------------------------------------------------------------------
    def repo_info(self, api: HfApi, repo_id: str, *args, **kwargs):
        self.tokens_seen.append(api.token)
        if not self.repo(repo_id).is_dir():
            raise _error(RepositoryNotFoundError, 404, f"{repo_id} not found")
        return SimpleNamespace(id=repo_id, sha=f"{len(self.commits):040d}", private=self.private[repo_id])

    def create_repo(self, api: HfApi, repo_id: str, *args, private: bool | None = None, exist_ok: bool = False, **kwargs):
        self._maybe_fail()
        self.repo(repo_id).mkdir(parents=True, exist_ok=True)
        self.private.setdefault(repo_id, bool(private))
        return SimpleNamespace(repo_id=repo_id, url=f"https://hub.invalid/datasets/{repo_id}")

    def create_branch(self, api: HfApi, *args, **kwargs):
        return None

    def preupload_lfs_files(self, api: HfApi, repo_id: str, additions, *args, **kwargs):
        for operation in additions:
            self._staged[id(operation)] = _content(operation.path_or_fileobj)

    def create_commit(self, api: HfApi, repo_id: str, operations, *args, commit_message: str = "", **kwargs):
        self._maybe_fail()
        folder = self.repo(repo_id)
        for operation in operations:
            target = folder / operation.path_in_repo
            if type(operation).__name__ == "CommitOperationDelete":
                target.unlink(missing_ok=True)
                continue
            data = self._staged.pop(id(operation), None)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data if data is not None else _content(operation.path_or_fileobj))
        self.commits.append({"message": commit_message, "paths": [o.path_in_repo for o in operations]})
        return SimpleNamespace(oid=f"{len(self.commits):040d}", commit_url="https://hub.invalid/commit")

    def upload_file(self, api: HfApi, *, path_or_fileobj, path_in_repo: str, repo_id: str, commit_message: str = "", **kwargs):
        from huggingface_hub import CommitOperationAdd

        return self.create_commit(
            api, repo_id, [CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=path_or_fileobj)], commit_message=commit_message
        )

    def hf_hub_download(self, api: HfApi, repo_id: str, filename: str, *args, **kwargs) -> str:
        self._maybe_fail()
        path = self.repo(repo_id) / filename
        if not path.is_file():
            raise _error(RemoteEntryNotFoundError, 404, f"{filename} not found")
        return str(path)

    def list_repo_files(self, api: HfApi, repo_id: str, *args, **kwargs) -> list[str]:
        self._maybe_fail()
        root = self.repo(repo_id)
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    # --- wiring ---------------------------------------------------------------------------------
    def install(self, monkeypatch) -> FakeHub:
        for name in (
            "repo_info",
            "create_repo",
            "create_branch",
            "preupload_lfs_files",
            "create_commit",
            "upload_file",
            "hf_hub_download",
            "list_repo_files",
        ):
            method = getattr(self, name)
            monkeypatch.setattr(HfApi, name, lambda api, *a, _m=method, **k: _m(api, *a, **k))
        hub = self

        class LocalHubFileSystem(LocalFileSystem):
            """`datasets/<repo_id>@<revision>/<path>` → `<root>/<repo_id>/<path>`."""

            def __init__(self, *args, **kwargs):
                super().__init__()

            @classmethod
            def _strip_protocol(cls, path):
                path = str(path)
                if path.startswith("hf://"):
                    path = path[len("hf://") :]
                if path.startswith("datasets/"):
                    repo_and_rev, _, rest = path[len("datasets/") :].partition("/")
                    owner = repo_and_rev
                    name, _, rest2 = rest.partition("/")
                    repo = f"{owner}/{name}".split("@")[0]
                    return str(hub.root / repo / rest2).rstrip("/")
                return super()._strip_protocol(path)

        import datasets.arrow_dataset

        monkeypatch.setattr(datasets.arrow_dataset, "HfFileSystem", LocalHubFileSystem)
        return self


def _content(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, (str, Path)):
        return Path(value).read_bytes()
    if isinstance(value, io.BufferedIOBase) or hasattr(value, "read"):
        position = value.tell()
        value.seek(0)
        data = value.read()
        value.seek(position)
        return data
    raise TypeError(f"cannot read {type(value).__name__}")
