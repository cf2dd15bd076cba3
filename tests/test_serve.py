"""actadd serve: its endpoints on tiny-books, and each security rule (a test that fails without
it): the token, the Host and Origin headers, the body cap, the setting caps, one run at a time,
and a closed connection stopping its generation."""

from __future__ import annotations

import http.client
import json
import shlex
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import actadd
import minigpt
from actadd.cli import main as actadd_main
from actadd.serve import MAX_BODY, MAX_NEW_TOKENS, Server, Settings, Steerer


@pytest.fixture(scope="module")
def steerer():
    model, tok = minigpt.load("tiny-books")
    return Steerer(model, tok, "tiny-books")


@pytest.fixture()
def server(steerer):
    server = Server(steerer, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def request(server, method, path, body=None, headers=None, token=True):
    """(status, headers, body bytes) of one request, every header under the test's control."""
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    sent = {"Host": f"127.0.0.1:{port}"}
    if token:
        sent["X-ActAdd-Token"] = server.token
    sent.update(headers or {})
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in sent.items():
        conn.putheader(k, v)
    if data is not None:
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    response = conn.getresponse()
    out = response.status, dict(response.getheaders()), response.read()
    conn.close()
    return out


def events(raw: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in raw.decode().split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.split("\n"))
            out.append((lines["event"], json.loads(lines["data"])))
    return out


SETTINGS = {"prompt": "In the morning we", "plus": "whale", "minus": "", "layer": 1, "coeff": 6.0, "n": 2,
            "seed": 3, "max_new_tokens": 12}


def test_the_page_needs_the_token_and_works_offline(server):
    status, headers, body = request(server, "GET", f"/?token={server.token}", token=False)
    page = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert '"tiny-books"' in page and "__MODEL__" not in page and "__DEFAULTS__" not in page
    assert "http://" not in page and "https://" not in page and "src=" not in page       # nothing fetched from elsewhere
    assert server.url.startswith("http://127.0.0.1:") and server.url.endswith(server.token)
    for path in ("/", "/?token=wrong", f"/?token={server.token[:-1]}"):
        status, _, body = request(server, "GET", path, token=False)
        assert status == 403 and b"token" in body, path


def test_steering_streams_the_completions_actadd_steer_prints(server, capsys):
    """Both columns fill token by token; the last texts equal `actadd steer --json` run with the
    command line the page shows (copy as command), and the first token comes in under a second."""
    status, headers, raw = request(server, "POST", "/api/steer", SETTINGS)
    assert status == 200 and headers["Content-Type"] == "text/event-stream"
    got = events(raw)
    assert got[0][0] == "inspect" and got[-1][0] == "done"
    tokens = [data for name, data in got if name == "token"]
    assert {t["kind"] for t in tokens} == {"unsteered", "steered"} and len(tokens) >= 12
    assert tokens[0]["ms"] < 1000
    timing = f"tiny-books: first token after {tokens[0]['ms']:.0f} ms, last after {got[-1][1]['ms']:.0f} ms"
    last = {t["kind"]: t["texts"] for t in tokens}
    inspection = got[0][1]
    command = shlex.split(inspection["command"])
    assert command[:2] == ["actadd", "steer"]
    assert actadd_main(command[1:] + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["unsteered"] == last["unsteered"] and printed["steered"] == last["steered"]
    assert last["unsteered"] != last["steered"]
    # what the inspection says, against the library's own functions
    model, tok = server.steerer.model, server.steerer.tokenizer
    vector = server.steerer.vector(Settings(**SETTINGS))
    report = actadd.norm_report(model, tok, vector, SETTINGS["prompt"])[0]
    assert inspection["ratio"] == pytest.approx((report.steering / report.residual).tolist())
    assert len(inspection["resid_norm_by_layer"]) == model.config.n_layer
    assert inspection["kl"] == pytest.approx(actadd.measure.next_token(model, tok, SETTINGS["prompt"], vector).kl)
    print(timing)


def test_the_vector_download_loads_with_actadd_load(server, tmp_path):
    status, headers, body = request(server, "POST", "/api/vector", SETTINGS)
    assert status == 200 and "attachment" in headers["Content-Disposition"]
    path = tmp_path / "v.safetensors"
    path.write_bytes(body)
    loaded = actadd.load(path, server.steerer.model)
    made = server.steerer.vector(Settings(**SETTINGS))
    assert np.array_equal(loaded.activations[0], made.activations[0]) and loaded.layers == [1]


def test_the_grid_is_measure_sweep_over_layers_and_coefficients(server):
    from actadd.measure import sweep

    status, _, body = request(server, "POST", "/api/grid", {**SETTINGS, "words": "whale sea"})
    grid = json.loads(body)
    assert status == 200 and grid["metric"] == "effectiveness" and grid["layers"] == [0, 1, 2, 3]
    assert grid["coeffs"] == [-12.0, -6.0, -3.0, 0.0, 3.0, 6.0, 12.0]                # around the chosen 6
    tok = server.steerer.tokenizer
    rows = sweep(server.steerer.model, tok, "whale", "", [2], [12.0], prompt=SETTINGS["prompt"],
                 topic_tokens=tok.encode(" whale") + tok.encode(" sea"), progress=False)
    assert grid["values"][2][6] == pytest.approx(rows[0]["effectiveness"], rel=1e-5)
    assert grid["values"][0][3] == pytest.approx(0.0, abs=1e-6)                       # coefficient 0
    status, _, body = request(server, "POST", "/api/grid", {**SETTINGS, "words": "whaleship"})
    assert status == 400 and "'whaleship' is" in json.loads(body)["error"]
    status, _, body = request(server, "POST", "/api/grid", SETTINGS)
    assert json.loads(body)["metric"] == "kl" and min(min(r) for r in json.loads(body)["values"]) >= 0


PAIRS = "whale\tman\nsea\tland\n"


@pytest.mark.filterwarnings("ignore:.*llama.cpp adds a control vector at every token")
def test_pairs_stream_what_the_shown_command_prints(server, capsys, tmp_path, monkeypatch):
    """A pairs list, read as a direction at the last token: the shown command writes pairs.tsv
    and runs `actadd steer --pairs`; its completions are the streamed ones."""
    settings = {**SETTINGS, "pairs": PAIRS, "reading": "last", "coeff": 3.0, "layer": 2}   # llama.cpp names layers >= 2
    status, _, raw = request(server, "POST", "/api/steer", settings)
    got = events(raw)
    assert status == 200 and got[-1][0] == "done"
    last = {data["kind"]: data["texts"] for name, data in got if name == "token"}
    write, run = got[0][1]["command"].split(" && ")
    monkeypatch.chdir(tmp_path)
    subprocess.run(["bash", "-c", write], check=True)
    assert (tmp_path / "pairs.tsv").read_text() == PAIRS
    capsys.readouterr()
    assert actadd_main(shlex.split(run)[1:] + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steered"] == last["steered"] and printed["unsteered"] == last["unsteered"]
    assert "--reading last" in run and "--plus" not in run
    # its .gguf, a llama.cpp control vector, loads back as the same direction
    status, headers, body = request(server, "POST", "/api/vector?format=gguf", settings)
    assert status == 200 and headers["Content-Disposition"].endswith('actadd-vector.gguf"')
    (tmp_path / "v.gguf").write_bytes(body)
    loaded = actadd.load(tmp_path / "v.gguf", server.steerer.model)
    made = server.steerer.vector(Settings(**settings))
    np.testing.assert_allclose(loaded.directions[0], made.directions[0], rtol=1e-6)
    status, _, body = request(server, "POST", "/api/vector?format=gguf", SETTINGS)          # an ActAdd matrix
    assert status == 400 and "one direction per layer" in json.loads(body)["error"]
    status, _, body = request(server, "POST", "/api/grid", settings)
    assert status == 200 and len(json.loads(body)["values"]) == 4


@pytest.mark.parametrize("headers,why", [
    ({"Host": "evil.example:80"}, "Host 'evil.example:80' is not this server"),            # DNS rebinding
    ({"Origin": "http://evil.example"}, "Origin 'http://evil.example'"),                    # another site's page
    ({"X-ActAdd-Token": "nope"}, "wrong token"),
])
def test_requests_from_elsewhere_are_refused(server, headers, why):
    status, _, body = request(server, "POST", "/api/steer", SETTINGS, headers=headers)
    assert status == 403 and why in json.loads(body)["error"]


def test_the_page_s_own_origin_and_localhost_are_accepted(server):
    port = server.server_address[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}"):
        status, _, _ = request(server, "POST", "/api/vector", SETTINGS, headers={"Host": host, "Origin": f"http://{host}"})
        assert status == 200, host


@pytest.mark.parametrize("body,status,why", [
    (b"x" * (MAX_BODY + 1), 413, f"at most {MAX_BODY:,}"),
    (b"{not json", 400, "not JSON"),
    (b"[" * 10_000, 400, "nests too deeply"),                                          # a RecursionError, a 500 before
    ({**SETTINGS, "prompt": "the sea " * 60, "max_new_tokens": 200}, 400,              # a stream that failed, before
     "plus max_new_tokens=200 is longer than n_positions=256"),
    ({**SETTINGS, "max_new_tokens": MAX_NEW_TOKENS + 1}, 400, "max_new_tokens: expected an integer from 1 to 200"),
    ({**SETTINGS, "n": 5}, 400, "n: expected an integer from 1 to 4"),
    ({**SETTINGS, "layer": 4}, 400, "layer: expected an integer from 0 to 3"),
    ({**SETTINGS, "coeff": float("nan")}, 400, "coeff: expected a number"),
    ({**SETTINGS, "model": "gpt2"}, 400, "unknown setting(s) 'model'"),                   # the browser names no model
    ({**SETTINGS, "vector": "/etc/passwd"}, 400, "unknown setting(s) 'vector'"),          # and no file
    ({**SETTINGS, "prompt": "x" * 2001}, 400, "prompt: expected text of at most 2000"),
    ({**SETTINGS, "pairs": "whale\tman\nsea land"}, 400, "pairs:2: expected 'plus<TAB>minus'"),
    ({**SETTINGS, "reading": "first"}, 400, "reading: one of"),
    ({**SETTINGS, "prompt": "In", "plus": "whale whale whale whale whale"}, 400, "but the steering matrix has 6 positions"),
])
def test_bad_settings_are_refused_by_name(server, body, status, why):
    got, _, raw = request(server, "POST", "/api/steer", body)
    assert got == status and why in json.loads(raw)["error"], raw


def test_a_failure_inside_is_said_to_the_page(server, monkeypatch):
    """A bug while streaming ends the stream with an error event, and before it a 500 with the
    message: the page shows it instead of a connection that just stops."""
    def broken(self, s, vector):
        yield "unsteered", ["a"]
        raise RuntimeError("the model broke")
    monkeypatch.setattr(Steerer, "completions", broken)
    status, _, raw = request(server, "POST", "/api/steer", SETTINGS)
    got = events(raw)
    assert status == 200 and got[-1] == ("error", {"error": "internal error: RuntimeError: the model broke"})
    monkeypatch.setattr(Steerer, "vector_file", lambda self, s, suffix: 1 / 0)
    status, _, body = request(server, "POST", "/api/vector", SETTINGS)
    assert status == 500 and "ZeroDivisionError" in json.loads(body)["error"]
    assert not server.steerer.lock.locked()


class SlowToRelease:
    """The server's lock, let go of 50 ms after the answer went out: the moment in which a
    back-to-back request arrives, made long enough to hit every time."""

    def __init__(self, lock):
        self.lock = lock

    def acquire(self, *args, **kwargs):
        return self.lock.acquire(*args, **kwargs)

    def release(self):
        time.sleep(0.05)
        self.lock.release()

    def locked(self):
        return self.lock.locked()


def test_back_to_back_requests_are_not_refused_as_busy(server, monkeypatch):
    """Before: 4-35 of 40 back-to-back downloads got 409, sent while the last one's thread was
    still letting go of the model after its answer."""
    monkeypatch.setattr(server.steerer, "lock", SlowToRelease(server.steerer.lock))
    assert [request(server, "POST", "/api/vector", SETTINGS)[0] for _ in range(5)] == [200] * 5


def test_one_run_at_a_time(server):
    with server.steerer.lock:                       # another request is running
        status, _, body = request(server, "POST", "/api/steer", SETTINGS)
    assert status == 409 and "busy" in json.loads(body)["error"]
    assert request(server, "POST", "/api/vector", SETTINGS)[0] == 200       # free again


def test_a_closed_connection_stops_its_generation(server, monkeypatch):
    """200 tokens x 4 rows, each step slowed to 20 ms (8 s in all): the client reads the first
    token and hangs up; the server stops at its next token and the model is free within a second."""
    made = []
    original = Steerer.completions

    def slow(self, s, vector):
        for item in original(self, s, vector):
            time.sleep(0.02)
            made.append(item)
            yield item
    monkeypatch.setattr(Steerer, "completions", slow)
    port = server.server_address[1]
    body = json.dumps({**SETTINGS, "n": 4, "max_new_tokens": 200}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(f"POST /api/steer HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-ActAdd-Token: {server.token}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        seen = b""
        while b"event: token" not in seen:
            seen += sock.recv(4096)
        assert seen.startswith(b"HTTP/1.0 200")
    deadline = time.monotonic() + 1.0
    while server.steerer.lock.locked() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not server.steerer.lock.locked()
    assert len(made) < 40                            # of the 400 a full run makes


def test_on_every_address_the_machine_s_own_names_are_accepted_and_no_other(steerer):
    server = Server(steerer, "0.0.0.0", 0)
    try:
        port = server.server_address[1]
        assert f"{socket.gethostname()}:{port}" in server.hosts and f"127.0.0.1:{port}" in server.hosts
        assert f"evil.example:{port}" not in server.hosts and f"0.0.0.0:{port}" not in server.hosts
    finally:
        server.server_close()


def test_serve_binds_this_machine_unless_told_and_warns_when_told(tmp_path):
    """`actadd serve` prints its URL (127.0.0.1, with a token); --host 0.0.0.0 warns first."""
    for host, warned in (("127.0.0.1", False), ("0.0.0.0", True)):
        proc = subprocess.Popen([sys.executable, "-m", "actadd.cli", "serve", "--port", "0", "--host", host],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            lines = [proc.stdout.readline() for _ in range(2)]
        finally:
            proc.kill()
            err = proc.communicate()[1]
        assert lines[1].strip().startswith("http://127.0.0.1:") and "/?token=" in lines[1]
        assert ("warning: listening on 0.0.0.0" in err) == warned, err


# ---------------------------------------------------------------------------------------------
# In a real browser: Debian's chromium, driven headless by selenium (.ci/run installs both)

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture()
def browser(tmp_path):
    import os

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed in CI (.ci/run installs them)")
        pytest.skip("no chromium here: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.downloads = downloads
    yield driver
    driver.quit()


def test_the_page_in_a_browser(server, browser, capsys, tmp_path):
    """Load the page, type a prompt and steering prompts, move the coefficient slider: both
    columns fill, the steered text equals what `actadd steer` prints for the settings on screen;
    the downloaded vector loads with actadd.load; the grid fills; the screenshot is kept
    (tests/artifacts/serve.png)."""
    from pathlib import Path

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server.url)
    wait = WebDriverWait(browser, 30)
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") == "1")
    browser.execute_script("document.body.dataset.done = ''")
    for field, text in (("prompt", "In the morning we"), ("plus", "whale"), ("minus", ""), ("max_new_tokens", "16")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(text)
    browser.execute_script("""const s = document.getElementById('layer'); s.value = 1;
                              s.dispatchEvent(new Event('input'));
                              const c = document.getElementById('coeff-range'); c.value = 6;
                              c.dispatchEvent(new Event('input'));""")        # a slider moved by hand
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-done") == "1")
    steered = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#steered .completion")]
    plain = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#unsteered .completion")]
    command = browser.find_element(By.ID, "command").text
    assert "--coeff 6.0" in command and "--layer 1" in command and "--plus whale" in command
    assert len(steered) == len(plain) == 1 and steered != plain
    capsys.readouterr()
    assert actadd_main(shlex.split(command)[1:] + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert steered == ["In the morning we" + printed["steered"][0]]
    assert plain == ["In the morning we" + printed["unsteered"][0]]
    status = browser.find_element(By.ID, "status").text
    assert status.startswith("first token after") and browser.find_element(By.ID, "error").text == ""
    assert len(browser.find_elements(By.CSS_SELECTOR, "#norms rect")) == 4       # a bar per layer
    browser.find_element(By.ID, "download").click()                          # the vector, as the page saves it
    saved = browser.downloads / "actadd-vector.safetensors"
    wait.until(lambda d: saved.exists() and saved.stat().st_size > 0)
    loaded = actadd.load(saved, server.steerer.model)
    made = server.steerer.vector(Settings(prompt="In the morning we", plus="whale", minus="", layer=1, coeff=6.0))
    assert np.array_equal(loaded.activations[0], made.activations[0])
    # The model busy for 3 s (past the server's 2 s wait: a 409): the download retries, then saves.
    server.steerer.lock.acquire()
    threading.Timer(3.0, server.steerer.lock.release).start()
    browser.find_element(By.ID, "download").click()
    again = browser.downloads / "actadd-vector (1).safetensors"
    wait.until(lambda d: again.exists() and again.stat().st_size > 0)
    assert again.read_bytes() == saved.read_bytes() and browser.find_element(By.ID, "error").text == ""
    browser.find_element(By.ID, "words").send_keys("whale sea")
    browser.find_element(By.ID, "grid-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#grid rect.cell")) == 4 * 7)
    assert "effectiveness" in browser.find_element(By.ID, "grid-title").text
    artifacts = Path(__file__).parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    browser.save_screenshot(str(artifacts / "serve.png"))
    print(f"browser: {status}")


@pytest.mark.parametrize("method,extra", [
    ("mean-diff", {"pairs": PAIRS}),
    ("pca", {"pairs": PAIRS}),
    ("ablation", {"pairs": PAIRS, "coeff": 1.0}),
    ("mean-centring", {"target": "The whale swam in the sea.\nShips sail on the ocean.", "general": "He walked home.\nIt rained."}),
])
def test_each_method_streams_what_the_shown_command_prints(server, capsys, tmp_path, monkeypatch, method, extra):
    """--method on the page: the shown command (writing its pairs or texts first) prints the
    streamed completions, and the page refuses what the method cannot take."""
    settings = {**SETTINGS, "method": method, "layer": 2, "coeff": 3.0, **extra}
    status, _, raw = request(server, "POST", "/api/steer", settings)
    got = events(raw)
    assert status == 200 and got[-1][0] == "done", got[-1]
    last = {data["kind"]: data["texts"] for name, data in got if name == "token"}
    *writes, run = got[0][1]["command"].split(" && ")
    monkeypatch.chdir(tmp_path)
    for write in writes:
        subprocess.run(["bash", "-c", write], check=True)
    assert f"--method {method}" in run
    capsys.readouterr()
    assert actadd_main(shlex.split(run)[1:] + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steered"] == last["steered"] and printed["unsteered"] == last["unsteered"]
    assert printed["steered"] != printed["unsteered"]
    status, _, body = request(server, "POST", "/api/steer", {**settings, "reading": "last"})
    assert status == 400 and "reading" in json.loads(body)["error"]
