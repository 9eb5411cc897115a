"""The official `e2b` Python SDK, unchanged, against a Petrel host agent.

Covers issue 7's acceptance list: create with metadata and env vars;
commands (stdout/stderr, exit-code error, cwd, user, env, background +
connect + kill, stdin); PTY; files (text, bytes, many, list, exists, info,
make_dir, rename, remove, watch_dir polling and streaming, signed URLs);
list filters and pagination; get_info; pause -> connect with files and
processes intact; auto-pause at timeout; snapshots (create, list, create-from, delete);
set_timeout expiry; kill. Tests run in file order; each boot under TCG
costs seconds, so most share the session's sandbox `sbx`.
"""

import asyncio
import datetime
import os
import threading
import time

import httpx
import pytest
from e2b import (
    AsyncSandbox,
    AuthenticationException,
    CommandExitException,
    FileNotFoundException,
    FilesystemEventType,
    FileType,
    PtySize,
    Sandbox,
    SandboxException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
    Template,
)
from e2b.sandbox.network import ALL_TRAFFIC

HOME = "/home/user"


def wait_for(predicate, timeout=20.0, interval=0.2, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def all_pages(paginator):
    pages = []
    while paginator.has_next:
        pages.append(paginator.next_items())
    return pages


# ---- create, info --------------------------------------------------------


def test_create_with_metadata_and_env_vars(sbx, run_id):
    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.template_id == "base"
    assert info.metadata == {"suite": run_id, "role": "main"}
    assert info.state == SandboxState.RUNNING
    assert info.envd_version == "0.6.4"
    assert info.cpu_count >= 1 and info.memory_mb >= 128
    ttl = (info.end_at - info.started_at).total_seconds()
    assert abs(ttl - 900) < 5, ttl
    assert info.end_at > datetime.datetime.now(datetime.timezone.utc)
    assert sbx.is_running()

    assert sbx.commands.run("echo $SUITE_VAR").stdout == "from-create\n"


def test_wrong_api_key_is_refused():
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key="e2b_" + "0" * 32)
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key="e2b_" + "0" * 32).next_items()


# ---- commands --------------------------------------------------------------


def test_commands_stdout_stderr_and_exit_code(sbx):
    result = sbx.commands.run("echo out; echo err >&2")
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 0)

    with pytest.raises(CommandExitException) as failed:
        sbx.commands.run("echo partial; echo oops >&2; exit 3")
    assert failed.value.exit_code == 3
    assert failed.value.stdout == "partial\n"
    assert failed.value.stderr == "oops\n"


def test_commands_cwd_user_and_env(sbx):
    assert sbx.commands.run("whoami; pwd; echo $HOME").stdout == f"user\n{HOME}\n{HOME}\n"
    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    assert sbx.commands.run("whoami; pwd", user="root").stdout == "root\n/root\n"
    assert (
        sbx.commands.run('echo "$A|$B"', envs={"A": "1", "B": "two words"}).stdout
        == "1|two words\n"
    )
    # What SDK users assume of the base template.
    sbx.commands.run("sudo -n true && python3 --version && curl --version && git --version")


def test_background_command_connect_and_kill(sbx):
    handle = sbx.commands.run(
        "for i in $(seq 1 100); do echo tick $i; sleep 0.5; done", background=True
    )
    assert handle.pid > 0
    assert handle.pid in [p.pid for p in sbx.commands.list()]
    handle.disconnect()

    attached = sbx.commands.connect(handle.pid)
    seen = []
    for stdout, _stderr, _pty in attached:
        if stdout:
            seen.append(stdout)
            if "tick" in "".join(seen):
                break
    assert "tick" in "".join(seen)

    assert sbx.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        attached.wait()
    wait_for(
        lambda: handle.pid not in [p.pid for p in sbx.commands.list()],
        what="the killed process to leave the list",
    )
    assert sbx.commands.kill(handle.pid) is False


def test_send_stdin_and_close_stdin(sbx):
    handle = sbx.commands.run("read line; echo got:$line", background=True, stdin=True)
    sbx.commands.send_stdin(handle.pid, "hello\n")
    assert handle.wait().stdout == "got:hello\n"

    cat = sbx.commands.run("cat", background=True, stdin=True)
    cat.send_stdin("abc")
    cat.send_stdin(b"def")
    cat.close_stdin()
    assert cat.wait().stdout == "abcdef"


def test_pty_create_resize_input_kill(sbx):
    output = bytearray()
    handle = sbx.pty.create(PtySize(rows=24, cols=80))

    def pump():
        try:
            handle.wait(on_pty=output.extend)
        except CommandExitException:
            pass  # killed

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()

    sbx.pty.resize(handle.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(handle.pid, b"stty size; echo pty-$((40 + 2))\n")
    wait_for(
        lambda: b"30 100" in output and b"pty-42" in output,
        what=f"PTY output, got {bytes(output)!r}",
    )

    assert sbx.pty.kill(handle.pid) is True
    reader.join(timeout=15)
    assert not reader.is_alive()


# ---- files -----------------------------------------------------------------


def test_files_write_read_list_and_manage(sbx):
    base = f"{HOME}/files-test"
    written = sbx.files.write(f"{base}/hello.txt", "héllo wörld")
    assert written.path == f"{base}/hello.txt"
    assert sbx.files.read(f"{base}/hello.txt") == "héllo wörld"

    blob = bytes(range(256)) * 64
    sbx.files.write(f"{base}/blob.bin", blob)
    assert sbx.files.read(f"{base}/blob.bin", format="bytes") == blob

    entries = [{"path": f"{base}/many/{i:02}.txt", "data": f"file {i}"} for i in range(12)]
    assert len(sbx.files.write_files(entries)) == 12
    listed = sbx.files.list(f"{base}/many")
    assert [e.name for e in listed] == [f"{i:02}.txt" for i in range(12)]
    assert sbx.files.read(f"{base}/many/07.txt") == "file 7"

    # Relative paths are relative to the user's home.
    sbx.files.write("relative.txt", "rel")
    assert sbx.files.read(f"{HOME}/relative.txt") == "rel"

    assert sbx.files.exists(f"{base}/hello.txt")
    assert not sbx.files.exists(f"{base}/nope.txt")
    info = sbx.files.get_info(f"{base}/blob.bin")
    assert (info.name, info.type, info.size) == ("blob.bin", FileType.FILE, len(blob))
    assert info.owner == "user"

    assert sbx.files.make_dir(f"{base}/newdir") is True
    assert sbx.files.make_dir(f"{base}/newdir") is False
    assert sbx.files.get_info(f"{base}/newdir").type == FileType.DIR

    moved = sbx.files.rename(f"{base}/hello.txt", f"{base}/newdir/moved.txt")
    assert moved.path == f"{base}/newdir/moved.txt"
    assert not sbx.files.exists(f"{base}/hello.txt")
    assert sbx.files.read(f"{base}/newdir/moved.txt") == "héllo wörld"

    sbx.files.remove(f"{base}/newdir")
    assert not sbx.files.exists(f"{base}/newdir")
    with pytest.raises(FileNotFoundException):
        sbx.files.read(f"{base}/newdir/moved.txt")


def test_file_metadata_is_kept_returned_and_cleared_on_overwrite(sbx):
    path = f"{HOME}/with-metadata.txt"
    written = sbx.files.write(path, "v1", metadata={"Owner": "suite", "stage": "one"})
    info = sbx.files.get_info(path)
    listed = [e for e in sbx.files.list(HOME) if e.path == path]
    rewritten = sbx.files.write(path, "v2")
    after = sbx.files.get_info(path)

    assert written.metadata == {"owner": "suite", "stage": "one"}
    assert info.metadata == {"owner": "suite", "stage": "one"}
    assert listed and listed[0].metadata == {"owner": "suite", "stage": "one"}
    assert not rewritten.metadata
    assert not after.metadata
    assert sbx.files.read(path) == "v2"


def test_get_info_of_a_symlink_names_its_target(sbx):
    sbx.commands.run(f"echo target > {HOME}/link-target.txt && ln -sf {HOME}/link-target.txt {HOME}/a-link")

    info = sbx.files.get_info(f"{HOME}/a-link")

    assert info.type == FileType.SYMLINK
    assert info.symlink_target == f"{HOME}/link-target.txt"
    assert info.path == f"{HOME}/a-link"


def test_watch_dir_polling(sbx):
    watched = f"{HOME}/watched-sync"
    sbx.files.make_dir(watched)
    handle = sbx.files.watch_dir(watched)
    try:
        sbx.files.write(f"{watched}/new.txt", "x")
        events = []

        def saw_create():
            events.extend(handle.get_new_events())
            return any(
                e.name == "new.txt" and e.type == FilesystemEventType.CREATE for e in events
            )

        wait_for(saw_create, what=f"a CREATE event, got {events}")
    finally:
        handle.stop()


@pytest.mark.asyncio
async def test_watch_dir_stream_async(sbx):
    sandbox = await AsyncSandbox.connect(sbx.sandbox_id)
    watched = f"{HOME}/watched-async"
    await sandbox.files.make_dir(watched)
    events = []
    seen = asyncio.Event()

    def on_event(event):
        events.append(event)
        if event.name == "async.txt" and event.type == FilesystemEventType.WRITE:
            seen.set()

    handle = await sandbox.files.watch_dir(watched, on_event=on_event)
    try:
        await sandbox.files.write(f"{watched}/async.txt", "y")
        await asyncio.wait_for(seen.wait(), timeout=20)
    finally:
        await handle.stop()
    assert {e.name for e in events} == {"async.txt"}


def test_signed_upload_and_download_urls(sbx):
    path = f"{HOME}/signed/through-url.txt"
    upload = sbx.upload_url(path)
    assert "signature=" in upload
    # Plain HTTP without the SDK's routing headers: the proxy routes by signature.
    response = httpx.post(upload, files={"file": ("through-url.txt", b"uploaded bytes")})
    assert response.status_code == 200, response.text
    assert sbx.files.read(path) == "uploaded bytes"

    download = sbx.download_url(path)
    response = httpx.get(download)
    assert response.status_code == 200, response.text
    assert response.content == b"uploaded bytes"

    as_root = sbx.download_url(path, user="root", use_signature_expiration=60)
    assert httpx.get(as_root).content == b"uploaded bytes"

    tampered = download.replace("signature=v1_", "signature=v1_x")
    assert httpx.get(tampered).status_code == 401

    expiring = sbx.download_url(path, use_signature_expiration=1)
    expires_at = int(time.time()) + 1
    # envd judges expiry by the guest's clock: wait until it is past, too.
    wait_for(
        lambda: time.time() > expires_at + 1
        and int(sbx.commands.run("date +%s").stdout) > expires_at,
        what="the signature's expiry",
    )
    response = httpx.get(expiring)
    assert response.status_code == 401, response.text
    assert response.json()["message"] == "signature is already expired"


def test_metrics(sbx):
    metrics = sbx.get_metrics()
    assert len(metrics) >= 1
    sample = metrics[-1]
    assert sample.cpu_count >= 1
    assert 0 < sample.mem_used <= sample.mem_total
    assert 0 < sample.disk_used <= sample.disk_total


def test_connect_extends_but_never_shortens(sbx):
    before = sbx.get_info().end_at
    Sandbox.connect(sbx.sandbox_id, timeout=30)
    assert sbx.get_info().end_at == before

    sbx.set_timeout(1200)
    longer = sbx.get_info().end_at
    assert (longer - before).total_seconds() > 250
    again = sbx.connect(timeout=1500)
    assert again.sandbox_id == sbx.sandbox_id
    assert (sbx.get_info().end_at - longer).total_seconds() > 250


# ---- pause, list, connect ------------------------------------------------------


def test_pause_list_and_connect_keep_files_and_processes(sbx, run_id):
    other = Sandbox.create(
        metadata={"suite": run_id, "role": "other", "odd key": "a value&more=x%"},
        timeout=600,
    )
    try:
        other.files.write(f"{HOME}/state.txt", "kept")
        sleeper = other.commands.run("sleep 1000", background=True)
        sleeper.disconnect()
        other.commands.run("echo 41 > /tmp/counter")

        assert other.pause() is True
        assert Sandbox.pause(other.sandbox_id) is False  # 409: already paused
        assert not other.is_running()
        assert Sandbox.get_info(other.sandbox_id).state == SandboxState.PAUSED

        ours = SandboxQuery(metadata={"suite": run_id})
        paused = [
            s.sandbox_id
            for page in all_pages(
                Sandbox.list(query=SandboxQuery(metadata={"suite": run_id}, state=[SandboxState.PAUSED]))
            )
            for s in page
        ]
        assert paused == [other.sandbox_id]
        running = [
            s.sandbox_id
            for page in all_pages(
                Sandbox.list(query=SandboxQuery(metadata={"suite": run_id}, state=[SandboxState.RUNNING]))
            )
            for s in page
        ]
        assert running == [sbx.sandbox_id]

        pages = all_pages(Sandbox.list(query=ours, limit=1))
        assert [len(p) for p in pages] == [1, 1]
        # Newest first by default; ascending on request.
        assert [p[0].sandbox_id for p in pages] == [other.sandbox_id, sbx.sandbox_id]
        ascending = all_pages(Sandbox.list(query=ours, limit=1, order="asc"))
        assert [p[0].sandbox_id for p in ascending] == [sbx.sandbox_id, other.sandbox_id]
        listed = {s.sandbox_id: s for page in pages for s in page}
        assert listed[other.sandbox_id].state == SandboxState.PAUSED
        assert listed[sbx.sandbox_id].metadata == {"suite": run_id, "role": "main"}

        after_main = sbx.get_info().started_at + datetime.timedelta(milliseconds=1)
        newer = all_pages(Sandbox.list(query=SandboxQuery(metadata={"suite": run_id}, started_after=after_main)))
        assert [s.sandbox_id for page in newer for s in page] == [other.sandbox_id]
        by_template = all_pages(Sandbox.list(query=SandboxQuery(metadata={"suite": run_id}, template="base")))
        assert len([s for page in by_template for s in page]) == 2
        assert all_pages(Sandbox.list(query=SandboxQuery(template="no-such-template"))) == [[]]

        odd = all_pages(Sandbox.list(query=SandboxQuery(metadata={"odd key": "a value&more=x%"})))
        assert [s.sandbox_id for page in odd for s in page] == [other.sandbox_id]
        none = all_pages(Sandbox.list(query=SandboxQuery(metadata={"suite": run_id, "role": "nope"})))
        assert none == [[]]

        resumed = Sandbox.connect(other.sandbox_id, timeout=600)
        assert resumed.is_running()
        assert resumed.get_info().state == SandboxState.RUNNING
        assert resumed.files.read(f"{HOME}/state.txt") == "kept"
        assert sleeper.pid in [p.pid for p in resumed.commands.list()]
        assert resumed.commands.run("cat /tmp/counter").stdout == "41\n"

        # And once more: pause and resume repeatedly.
        assert resumed.pause() is True
        again = resumed.connect()
        assert again.commands.run("echo $((41 + 1))").stdout == "42\n"
        assert sleeper.pid in [p.pid for p in again.commands.list()]
    finally:
        assert Sandbox.kill(other.sandbox_id) is True
    assert Sandbox.kill(other.sandbox_id) is False
    assert not other.is_running()


def test_filesystem_only_pause_keeps_files_and_boots_afresh(run_id):
    sandbox = Sandbox.create(metadata={"suite": run_id, "role": "fs-pause"}, timeout=600)
    boot_id = "cat /proc/sys/kernel/random/boot_id"
    try:
        sandbox.files.write(f"{HOME}/kept.txt", "on disk")
        sleeper = sandbox.commands.run("sleep 1000", background=True)
        sleeper.disconnect()
        first_boot = sandbox.commands.run(boot_id).stdout

        paused = sandbox.pause(mode="filesystem")
        state = Sandbox.get_info(sandbox.sandbox_id).state
        resumed = Sandbox.connect(sandbox.sandbox_id, timeout=600)
        kept = resumed.files.read(f"{HOME}/kept.txt")
        second_boot = resumed.commands.run(boot_id).stdout
        sleepers = resumed.commands.run("pgrep -x sleep || echo none").stdout
        # A pause that kept memory, resumed with a reboot all the same.
        resumed.commands.run(f"echo again > {HOME}/again.txt && sync")
        resumed.pause()
        rebooted = Sandbox.connect(sandbox.sandbox_id, timeout=600, on_resume="reboot")
        third_boot = rebooted.commands.run(boot_id).stdout
        again = rebooted.files.read(f"{HOME}/again.txt")
    finally:
        assert Sandbox.kill(sandbox.sandbox_id) is True

    assert paused is True
    assert state == SandboxState.PAUSED
    assert kept == "on disk"
    assert len({first_boot, second_boot, third_boot}) == 3
    assert sleepers == "none\n"
    assert again == "again\n"


def test_filesystem_only_auto_pause_refuses_auto_resume():
    # Sent as the SDK would, but straight to the API (the SDK may refuse
    # the combination itself).
    refused = httpx.post(
        f"{os.environ['E2B_API_URL']}/sandboxes",
        headers={"X-API-KEY": os.environ["E2B_API_KEY"]},
        json={"templateID": "base", "timeout": 60, "autoPause": True,
              "autoPauseMemory": False, "autoResume": {"enabled": True}},
    )

    assert refused.status_code == 400, refused.text
    assert "autoResume" in refused.json()["message"]


def test_auto_pause_at_timeout_then_connect(run_id):
    sandbox = Sandbox.create(
        metadata={"suite": run_id, "role": "auto-pause"},
        timeout=4,
        lifecycle={"on_timeout": "pause"},
    )
    try:
        assert sandbox.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": False}
        sandbox.files.write(f"{HOME}/before-pause.txt", "still here")
        wait_for(
            lambda: Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED,
            timeout=30,
            what="the auto-pause at timeout",
        )
        assert not sandbox.is_running()
        resumed = sandbox.connect(timeout=60)
        assert resumed.files.read(f"{HOME}/before-pause.txt") == "still here"
        info = resumed.get_info()
        assert info.state == SandboxState.RUNNING
        assert 50 < (info.end_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds() <= 61
    finally:
        assert Sandbox.kill(sandbox.sandbox_id) is True


def test_auto_resume_wakes_a_timed_out_sandbox_on_its_next_request(run_id):
    sandbox = Sandbox.create(
        metadata={"suite": run_id, "role": "auto-resume"},
        timeout=6,
        lifecycle={"on_timeout": "pause", "auto_resume": True},
    )
    try:
        lifecycle = sandbox.get_info().lifecycle
        sandbox.files.write(f"{HOME}/before-pause.txt", "still here")
        wait_for(
            lambda: Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.PAUSED,
            timeout=30,
            what="the auto-pause at timeout",
        )
        # No connect: the request itself, through the proxy, resumes it.
        read = sandbox.files.read(f"{HOME}/before-pause.txt")
        info = Sandbox.get_info(sandbox.sandbox_id)
        # The timeout it was created with starts again (E2B's rule), not
        # the default.
        left = (info.end_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        ran = sandbox.commands.run("echo awake").stdout
    finally:
        assert Sandbox.kill(sandbox.sandbox_id) is True

    assert lifecycle == {"on_timeout": "pause", "auto_resume": True}
    assert read == "still here"
    assert info.state == SandboxState.RUNNING
    assert 0 < left <= 6, left
    assert ran == "awake\n"


def test_a_request_without_the_traffic_token_wakes_no_private_sandbox(run_id):
    sandbox = Sandbox.create(
        metadata={"suite": run_id, "role": "private-asleep"},
        timeout=120,
        lifecycle={"on_timeout": "pause", "auto_resume": True},
        network={"allow_public_traffic": False},
    )
    try:
        sandbox.pause()
        route = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "8001"}
        refused = httpx.get(os.environ["E2B_SANDBOX_URL"], headers=route)
        state = Sandbox.get_info(sandbox.sandbox_id).state
    finally:
        assert Sandbox.kill(sandbox.sandbox_id) is True

    assert refused.status_code == 403
    assert state == SandboxState.PAUSED


# ---- snapshots, timeout -------------------------------------------------------


def test_snapshot_create_list_create_from_delete_and_timeout(sbx):
    sbx.files.write(f"{HOME}/snapshot-marker.txt", "from the snapshot")
    snapshot = sbx.create_snapshot()
    assert snapshot.snapshot_id
    assert sbx.is_running()

    listed = [
        s.snapshot_id
        for page in all_pages(Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id))
        for s in page
    ]
    assert snapshot.snapshot_id in listed

    child = Sandbox.create(snapshot.snapshot_id, timeout=120)
    try:
        assert child.sandbox_id != sbx.sandbox_id
        assert child.get_info().template_id == snapshot.snapshot_id
        assert child.files.read(f"{HOME}/snapshot-marker.txt") == "from the snapshot"

        # set_timeout shortens as well as extends; expiry kills.
        child.set_timeout(3)
        wait_for(lambda: not child.is_running(), timeout=30, what="the sandbox to time out")
        assert Sandbox.kill(child.sandbox_id) is False
    finally:
        Sandbox.kill(child.sandbox_id)

    assert Sandbox.delete_snapshot(snapshot.snapshot_id) is True
    listed = [
        s.snapshot_id
        for page in all_pages(Sandbox.list_snapshots(sandbox_id=sbx.sandbox_id))
        for s in page
    ]
    assert snapshot.snapshot_id not in listed
    assert Sandbox.delete_snapshot(snapshot.snapshot_id) is False


def test_template_exists_for_templates_and_snapshots(sbx):
    assert Template.exists("base") is True
    assert Template.exists("no-such-template") is False
    snapshot = sbx.create_snapshot()
    try:
        assert Template.exists(snapshot.snapshot_id) is True
    finally:
        Sandbox.delete_snapshot(snapshot.snapshot_id)
    assert Template.exists(snapshot.snapshot_id) is False


def test_fork_copies_a_running_sandbox(sbx):
    sbx.files.write(f"{HOME}/fork-marker.txt", "before the fork")
    forks = sbx.fork(count=2, timeout=120)
    try:
        assert len(forks) == 2
        assert all(isinstance(f, Sandbox) for f in forks), forks
        forks[0].files.write(f"{HOME}/fork-marker.txt", "changed in fork 0")
        assert forks[1].files.read(f"{HOME}/fork-marker.txt") == "before the fork"
        assert sbx.files.read(f"{HOME}/fork-marker.txt") == "before the fork"
        assert sbx.is_running()
    finally:
        for f in forks:
            if isinstance(f, Sandbox):
                f.kill()


# ---- kill (last: it ends the shared sandbox) -------------------------------------


ECHO_HOST = """
import http.server as h
class H(h.BaseHTTPRequestHandler):
    def do_GET(self):
        body = self.headers["Host"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
h.HTTPServer(("0.0.0.0", 8001), H).serve_forever()
"""


def echo_host_sandbox(run_id, role, **create):
    """A sandbox running ECHO_HOST on port 8001 (guest ports other than
    envd's need the agent's namespaces, so the test is skipped unless root)."""
    if os.geteuid() != 0:
        pytest.skip("guest ports other than envd's need the agent's namespaces (root)")
    sandbox = Sandbox.create(metadata={"suite": run_id, "role": role}, timeout=120, **create)
    sandbox.files.write("/tmp/echo_host.py", ECHO_HOST)
    sandbox.commands.run("python3 /tmp/echo_host.py", background=True)
    return sandbox


def test_mask_request_host_is_the_host_guest_servers_see(run_id):
    sandbox = echo_host_sandbox(
        run_id, "mask", network={"mask_request_host": "${PORT}-masked.example.test"}
    )
    try:
        proxy = os.environ["E2B_SANDBOX_URL"]
        headers = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "8001"}

        def fetch():
            response = httpx.get(proxy, headers=headers)
            return response if response.status_code == 200 else None

        seen = wait_for(fetch, what="the guest server on port 8001").text
    finally:
        sandbox.kill()

    assert seen == "8001-masked.example.test"


def test_get_host_names_the_proxy_through_the_sandbox_domain(run_id):
    domain = os.environ["PETREL_SANDBOX_DOMAIN"]
    sandbox = echo_host_sandbox(run_id, "domain")
    try:
        host = sandbox.get_host(8001)
        connected = Sandbox.connect(sandbox.sandbox_id)
        proxy = os.environ["E2B_SANDBOX_URL"]

        # What a `*.{domain}` DNS entry (or a hosts-file line) pointing at
        # the proxy does: connect there, ask for the sandbox's host name.
        def fetch():
            response = httpx.get(proxy, headers={"Host": host})
            return response if response.status_code == 200 else None

        seen = wait_for(fetch, what="the guest server through its host name").text
    finally:
        sandbox.kill()

    assert sandbox.sandbox_domain == domain
    assert connected.sandbox_domain == domain
    assert host == f"8001-{sandbox.sandbox_id}.{domain}"
    assert seen == host


def test_allow_out_wins_over_deny_out_and_update_network_changes_the_rules(run_id, outside):
    a, b = outside["a"], outside["b"]
    sandbox = Sandbox.create(
        metadata={"suite": run_id, "role": "egress"},
        timeout=120,
        network={"allow_out": [a], "deny_out": [ALL_TRAFFIC]},
    )

    def reach():
        answers = []
        for ip in (a, b):
            out = sandbox.commands.run(
                f"curl -s -m 5 http://{ip}:8080/ || echo blocked", timeout=30
            )
            answers.append(out.stdout.strip())
        return tuple(answers)

    try:
        only_allowed = reach()
        sandbox.update_network({"deny_out": [f"{b}/32"]})
        one_denied = reach()
        shown = sandbox.get_info().network
        sandbox.update_network({})
        cleared = reach()
        sandbox.update_network({"deny_out": [ALL_TRAFFIC]})
        sandbox.pause()
        resumed = Sandbox.connect(sandbox.sandbox_id)
        after_resume = reach()
    finally:
        sandbox.kill()

    assert only_allowed == ("a", "blocked")
    assert one_denied == ("a", "blocked")
    assert shown.get("deny_out") == [f"{b}/32"] and not shown.get("allow_out"), shown
    assert cleared == ("a", "b")
    assert resumed.sandbox_id == sandbox.sandbox_id
    assert after_resume == ("blocked", "blocked")


def test_allow_out_names_let_http_and_tls_through_by_host_and_server_name(run_id, outside):
    a = outside["a"]
    sandbox = Sandbox.create(
        metadata={"suite": run_id, "role": "names"},
        timeout=120,
        network={"allow_out": ["allowed.test", "*.wild.test"], "deny_out": [ALL_TRAFFIC]},
    )

    def get(host, scheme="http"):
        # The name resolves to the outside server; only the name differs.
        port = 443 if scheme == "https" else 80
        out = sandbox.commands.run(
            f"curl -sk -m 5 --resolve {host}:{port}:{a} {scheme}://{host}/ || echo blocked",
            timeout=30,
        )
        return out.stdout.strip()

    try:
        http_allowed = get("allowed.test")
        http_denied = get("denied.test")
        tls_wildcard = get("api.wild.test", "https")
        tls_apex = get("wild.test", "https")
        by_address = sandbox.commands.run(
            f"curl -s -m 5 http://{a}:8080/ || echo blocked", timeout=30
        ).stdout.strip()
        shown = sandbox.get_info().network
        sandbox.update_network({"allow_out": ["denied.test"], "deny_out": [ALL_TRAFFIC]})
        switched = (get("allowed.test"), get("denied.test", "https"))
    finally:
        sandbox.kill()

    assert http_allowed == "a"
    assert http_denied == "blocked"
    assert tls_wildcard == "a"
    assert tls_apex == "blocked"
    assert by_address == "blocked"
    assert shown.get("allow_out") == ["allowed.test", "*.wild.test"], shown
    assert switched == ("blocked", "a")


def test_egress_rules_refuse_names_that_cannot_apply_and_unknown_sandboxes():
    with pytest.raises(SandboxException) as denied_name:
        Sandbox.create(network={"deny_out": ["example.com"]})
    with pytest.raises(SandboxException) as nothing_denied:
        Sandbox.create(network={"allow_out": ["example.com"]})
    with pytest.raises(Exception) as unknown:
        Sandbox.update_network("0123456789abcdef", {"deny_out": [ALL_TRAFFIC]})

    assert "deny lists take" in str(denied_name.value)
    assert "0.0.0.0/0" in str(nothing_denied.value)
    assert "not found" in str(unknown.value).lower()


def test_private_traffic_needs_the_traffic_access_token(run_id):
    sandbox = echo_host_sandbox(run_id, "private", network={"allow_public_traffic": False})
    try:
        proxy = os.environ["E2B_SANDBOX_URL"]
        route = {"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "8001"}
        token = sandbox.traffic_access_token

        def fetch(headers):
            response = httpx.get(proxy, headers=headers)
            return response if response.status_code != 502 else None

        with_token = wait_for(
            lambda: fetch({**route, "e2b-traffic-access-token": token}),
            what="the guest server with the token",
        )
        without = fetch(route)
        wrong = fetch({**route, "e2b-traffic-access-token": "0" * 32})
        info = sandbox.get_info()
        # envd's own port stays reachable: the SDK itself works.
        echoed = sandbox.commands.run("echo still-here").stdout
    finally:
        sandbox.kill()

    assert token and len(token) >= 32
    assert with_token.status_code == 200
    assert without.status_code == 403 and wrong.status_code == 403
    assert "e2b-traffic-access-token" in without.json()["message"]
    assert info.network.get("allow_public_traffic") is False
    assert echoed == "still-here\n"


def test_mask_request_host_must_be_a_host_name():
    with pytest.raises(SandboxException) as refused:
        Sandbox.create(network={"mask_request_host": "not a/host"})

    assert "maskRequestHost" in str(refused.value)


def test_kill_during_a_command_ends_it_with_sandbox_not_running(run_id):
    sandbox = Sandbox.create(metadata={"suite": run_id, "role": "killed"}, timeout=300)
    outcome = {}

    def run():
        try:
            # No command timeout: only the kill can end it.
            sandbox.commands.run("echo started; sleep 600", timeout=0, request_timeout=0)
            outcome["result"] = "finished"
        except Exception as err:  # noqa: BLE001 - the type is what is checked
            outcome["error"] = err
        outcome["ended"] = time.monotonic()

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    wait_for(
        lambda: any(p.cmd == "/bin/bash" and "sleep 600" in " ".join(p.args)
                    for p in sandbox.commands.list()),
        what="the command to run",
    )
    killed = time.monotonic()
    Sandbox.kill(sandbox.sandbox_id)
    runner.join(timeout=60)

    assert not runner.is_alive(), "the command did not end when its sandbox was killed"
    assert isinstance(outcome.get("error"), SandboxNotRunningException), outcome
    assert "killed" in str(outcome["error"])
    # Not left to TCP keepalive, which notices a vanished guest only after
    # 25 s (10 s idle, then 3 probes 5 s apart): the proxy cuts it off.
    assert outcome["ended"] - killed < 10, outcome["ended"] - killed


def test_kill(sbx):
    assert sbx.kill() is True
    assert not sbx.is_running()
    assert Sandbox.kill(sbx.sandbox_id) is False
