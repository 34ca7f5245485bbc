"""A tiny Hugging Face Hub look-alike for tests (stdlib only, model and dataset repos).

Speaks just enough of the Hub's HTTP API for the real `huggingface_hub` client
(2.4.0) to create repos, push commits and download files without internet:

    python tests/hub_server.py --port PORT --root DIR \
        [--write-token T]... [--read-token T]... [--user NAME]

Prints ``READY http://127.0.0.1:PORT`` once listening. Routes served:

    GET  /api/whoami-v2
    POST /api/repos/create                          {name, organization?, type?, private?|visibility?}
    POST /api/validate-yaml                         always valid
    POST /api/KIND/{ns}/{name}/preupload/{rev}      uploadMode "regular", oid of the remote file
    POST /api/KIND/{ns}/{name}/commit/{rev}         NDJSON: header, file (base64), deletedFile/Folder
    GET  /api/KIND/{ns}/{name}[/revision/{rev}]     model_info/dataset_info: id, sha, private, siblings
    GET  /api/KIND/{ns}/{name}/tree/{rev}[/{path}][?recursive=true]
    HEAD/GET /{ns}/{name}/resolve/{rev}/{path}      X-Repo-Commit, ETag, Content-Length (a model's file)
    HEAD/GET /datasets/{ns}/{name}/resolve/{rev}/{path}   (a dataset's file)
    POST /_admin/die-on-next-commit                 no auth; the next commit request kills the server

KIND is `models` or `datasets`, as on the real Hub.

Like the real Hub: a request with an unknown token gets 401 "Invalid credentials in
Authorization header", even on a public repo; a missing repo, or a private one asked
for without a token, gets X-Error-Code RepoNotFound (401 without a token, 404 with
one); read tokens get 403 on writes; `rev` is a branch ("main") or a commit id; a new
repo starts with one commit holding `.gitattributes`.

On disk, under --root: KIND/<ns>/<name>/ = current files on main (for tests to look
at); .hub/KIND/<ns>/<name>.json = branches and commits; .hub/blobs/<git sha1> = data.
"""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
KINDS = {"model": "models", "dataset": "datasets"}  # repo type -> its URL and folder prefix
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
LOCK = threading.Lock()  # one lock around every request's use of the repo state
DIE_ON_NEXT_COMMIT = threading.Event()


class HubError(Exception):
    def __init__(self, status, message, code=None, commit=None):
        super().__init__(message)
        self.status, self.message, self.code, self.commit = status, message, code, commit


def git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Store:
    """Repos on disk. Callers hold LOCK."""

    def __init__(self, root: Path):
        self.root, self.blobs = root, root / ".hub" / "blobs"
        self.blobs.mkdir(parents=True, exist_ok=True)

    def load(self, kind, repo_id):
        path = self.root / ".hub" / kind / f"{repo_id}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def create(self, kind, repo_id, private):
        state = {"private": private, "branches": {}, "commits": {}}
        self.commit(kind, repo_id, state, "main", "initial commit", {".gitattributes": GITATTRIBUTES}, [])

    def commit(self, kind, repo_id, state, branch, title, added, deleted):
        parent = state["branches"].get(branch)
        files = dict(state["commits"][parent]["files"]) if parent else {}
        for gone in deleted:  # a file, or a folder (ends with "/")
            files = {p: o for p, o in files.items() if p != gone and not p.startswith(gone.rstrip("/") + "/")}
        for path, data in added.items():
            files[path] = git_sha1(data)
            (self.blobs / files[path]).write_bytes(data)
        oid = hashlib.sha1(json.dumps([parent, files, title]).encode() + os.urandom(16)).hexdigest()
        state["commits"][oid] = {"parent": parent, "title": title, "files": files,
                                 "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
        state["branches"][branch] = oid
        path = self.root / ".hub" / kind / f"{repo_id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps(state))
        os.replace(path.with_suffix(".tmp"), path)  # the commit is durable from here on
        if branch == "main":  # mirror the current files, for tests to look at
            mirror = self.root / kind / repo_id
            shutil.rmtree(mirror, ignore_errors=True)
            for p, blob in files.items():
                (mirror / p).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.blobs / blob, mirror / p)
        return oid


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
    server_version = "TestHub/1.0"

    def handle_any(self):
        method = self.command
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""  # always drain it, for keep-alive
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        segs = [unquote(s) for s in url.path.split("/") if s]  # split first: a rev may hold "/"
        try:
            with LOCK:
                status, body, headers = self.route(method, segs)
        except HubError as e:
            status, body = e.status, {"error": e.message}
            headers = {k: v for k, v in [("X-Error-Message", e.message), ("X-Error-Code", e.code),
                                         ("X-Repo-Commit", e.commit)] if v}
        except Exception as e:  # a bug, or a request it cannot parse: answer rather than hang up
            self.log_error("%s", traceback.format_exc())
            status, body, headers = 500, {"error": f"test hub: {e!r}"}, {}
        if not isinstance(body, bytes):
            body, headers = json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = handle_any

    def route(self, method, segs):
        if method == "POST" and segs == ["_admin", "die-on-next-commit"]:
            DIE_ON_NEXT_COMMIT.set()
            return 200, {"ok": True}, {}
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):].strip() if auth.startswith("Bearer ") else None
        self.role = ("write" if token in self.server.cfg.write_token else
                     "read" if token in self.server.cfg.read_token else None)
        if token is not None and self.role is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        if method == "GET" and segs == ["api", "whoami-v2"]:
            return self.whoami()
        if method == "POST" and segs == ["api", "repos", "create"]:
            return self.create_repo()
        if method == "POST" and segs == ["api", "validate-yaml"]:
            return 200, {"errors": [], "warnings": []}, {}
        if len(segs) >= 4 and segs[0] == "api" and segs[1] in KINDS.values():
            self.kind = segs[1]
            repo_id, state = self.repo(segs[2], segs[3])
            action, rest = (segs[4] if len(segs) > 4 else None), segs[5:]
            if method == "GET" and (action is None or (action == "revision" and len(rest) == 1)):
                return self.repo_info(repo_id, state, rest[0] if rest else "main")
            if method == "GET" and action == "tree" and rest:
                return self.tree(state, rest[0], "/".join(rest[1:]))
            if method == "POST" and action == "preupload" and len(rest) == 1:
                return self.preupload(state, rest[0])
            if method == "POST" and action == "commit" and len(rest) == 1:
                return self.commit(repo_id, state, rest[0])
        if method in ("GET", "HEAD") and len(segs) >= 6 and segs[0] == "datasets" and segs[3] == "resolve":
            self.kind = "datasets"
            return self.download(self.repo(segs[1], segs[2])[1], segs[4], "/".join(segs[5:]))
        if method in ("GET", "HEAD") and len(segs) >= 5 and segs[2] == "resolve":
            self.kind = "models"
            return self.download(self.repo(segs[0], segs[1])[1], segs[3], "/".join(segs[4:]))
        raise HubError(404, f"Not served by the test hub: {method} {self.path}")

    # -- helpers ----------------------------------------------------------------------
    def need_write(self, what):
        if self.role is None:
            raise HubError(401, "Invalid username or password.")
        if self.role != "write":
            raise HubError(403, f"You don't have the rights to {what}: this token is read-only")

    def repo(self, ns, name):
        """(repo_id, state); RepoNotFound if it is missing, or private and no token was sent."""
        repo_id = f"{ns}/{name}"
        state = self.server.store.load(self.kind, repo_id) if REPO_ID.fullmatch(repo_id) else None
        if state is None or (state["private"] and self.role is None):
            raise HubError(404 if self.role else 401, "Repository not found", "RepoNotFound")
        return repo_id, state

    @staticmethod
    def resolve(state, rev, branch_only=False):
        """Branch name, or full commit id unless branch_only -> commit id."""
        if rev in state["branches"]:
            return state["branches"][rev]
        if rev in state["commits"] and not branch_only:
            return rev
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def size(self, blob):
        return (self.server.store.blobs / blob).stat().st_size

    # -- routes -----------------------------------------------------------------------
    def whoami(self):
        if self.role is None:
            raise HubError(401, "Invalid username or password.")
        user, token = self.server.cfg.user, {"displayName": f"test-{self.role}", "role": self.role}
        return 200, {"type": "user", "id": user, "name": user, "fullname": user, "orgs": [],
                     "auth": {"type": "access_token", "accessToken": token}}, {}

    def create_repo(self):
        payload = json.loads(self.body or b"{}")
        repo_id = f"{payload.get('organization') or self.server.cfg.user}/{payload.get('name')}"
        repo_type = payload.get("type", "model")
        self.need_write(f"create a {repo_type} under the namespace {repo_id.split('/')[0]}")
        if not REPO_ID.fullmatch(repo_id) or repo_type not in KINDS:
            raise HubError(400, f"The test hub only makes model and dataset repos with plain names, not {repo_id}")
        kind = KINDS[repo_type]
        url = f"http://{self.headers.get('Host')}/{'' if kind == 'models' else 'datasets/'}{repo_id}"
        if self.server.store.load(kind, repo_id) is not None:
            return 409, {"error": f"You already created this {repo_type} repo", "url": url}, {}
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        self.server.store.create(kind, repo_id, private)
        return 200, {"url": url, "name": repo_id, "id": repo_id}, {}

    def repo_info(self, repo_id, state, rev):
        oid = self.resolve(state, rev)
        commit = state["commits"][oid]
        siblings = [{"rfilename": p, "blobId": b, "size": self.size(b)} for p, b in sorted(commit["files"].items())]
        model_id = {"modelId": repo_id} if self.kind == "models" else {}
        return 200, {"id": repo_id, **model_id, "author": repo_id.split("/")[0], "sha": oid,
                     "private": state["private"], "disabled": False, "gated": False, "tags": [],
                     "lastModified": commit["date"], "siblings": siblings}, {}

    def tree(self, state, rev, path):
        oid = self.resolve(state, rev)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = {}
        for p, blob in state["commits"][oid]["files"].items():
            if p.startswith(prefix):
                parts = p[len(prefix):].split("/")
                for i in range(1, len(parts) if recursive else min(len(parts), 2)):  # folders on the way
                    folder = prefix + "/".join(parts[:i])
                    entries[folder] = {"type": "directory", "path": folder, "size": 0,
                                       "oid": hashlib.sha1(folder.encode()).hexdigest()}
                if recursive or len(parts) == 1:
                    entries[p] = {"type": "file", "path": p, "size": self.size(blob), "oid": blob}
        if prefix and not entries:
            raise HubError(404, f"{path} does not exist on {rev}", "EntryNotFound", oid)
        return 200, [entries[k] for k in sorted(entries)], {}

    def preupload(self, state, rev):
        self.need_write("write to this repo")
        files = state["commits"][self.resolve(state, rev, branch_only=True)]["files"]
        answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": files.get(f["path"])}
                  for f in json.loads(self.body)["files"]]
        return 200, {"files": answer}, {}

    def commit(self, repo_id, state, rev):
        if DIE_ON_NEXT_COMMIT.is_set():
            os._exit(1)  # "the Hub went down during the push": no answer at all
        self.need_write("write to this repo")
        head = self.resolve(state, rev, branch_only=True)
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        if header.get("parentCommit") and not head.startswith(header["parentCommit"]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        added, deleted = {}, []
        for item in lines:
            key, value = item["key"], item["value"]
            if key == "file":
                added[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"] + ("/" if key == "deletedFolder" else ""))
            elif key != "header":
                raise HubError(400, f"The test hub does not support '{key}' operations")
        oid = self.server.store.commit(self.kind, repo_id, state, rev, header.get("summary") or "Upload", added,
                                       deleted)
        url = f"http://{self.headers.get('Host')}/{'' if self.kind == 'models' else 'datasets/'}{repo_id}/commit/{oid}"
        return 200, {"success": True, "commitOid": oid, "commitUrl": url, "hookOutput": "",
                     "pullRequestUrl": None}, {}

    def download(self, state, rev, path):
        oid = self.resolve(state, rev)
        blob = state["commits"][oid]["files"].get(path)
        if blob is None:
            raise HubError(404, "Entry not found", "EntryNotFound", oid)
        headers = {"X-Repo-Commit": oid, "ETag": f'"{blob}"', "Content-Type": "application/octet-stream"}
        return 200, (self.server.store.blobs / blob).read_bytes(), headers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--write-token", action="append", default=[])
    parser.add_argument("--read-token", action="append", default=[])
    parser.add_argument("--user", default="tester")
    cfg = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", cfg.port), Handler)
    server.daemon_threads = True
    server.cfg, server.store = cfg, Store(cfg.root)
    print(f"READY http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
