"""`actadd serve`: a local page to steer a model by hand and see what the vector does.

One model per server, loaded from the command line when it starts: the browser can never name a
file or a model. The standard library's threaded HTTP server and one HTML page shipped in the
package (actadd/static/serve.html, its script and styles inline, nothing fetched from the
internet). Endpoints, each of which needs the token the start-up URL carries:

    GET  /?token=T        the page
    POST /api/steer       server-sent events: first the inspection (norms by layer, next-token
                          distributions, the logit lens, the command line), then the unsteered and
                          steered completions token by token, from the same seeds; a closed tab
                          stops the generation at its next token
    POST /api/vector      the steering vector as a .safetensors file (?format=gguf: a llama.cpp
                          control vector, for a direction made from pairs)
    POST /api/grid        JSON: a layer x coefficient grid of the next-token KL, or of the
                          effectiveness over given words, for a heat map

Rules, each with a test: the token on every request (?token= or the X-ActAdd-Token header);
the Host header must name this server (no DNS rebinding) and an Origin header, if sent, this
page (no cross-site requests); request bodies at most MAX_BODY bytes, every setting checked and
capped (MAX_NEW_TOKENS, MAX_ROWS); one model run at a time, a second answered 409 "busy";
127.0.0.1 unless --host says otherwise, with a warning.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from itertools import zip_longest
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np

import minigpt
from minigpt import Sampling, Transformer
from minigpt.tokenizer import Tokenizer

from .measure import next_token
from . import methods
from .methods import METHODS
from .pairs import READINGS, mean_of_pairs, parse_pairs
from .steering import (ALIGNMENTS, PADDINGS, PAPER_SAMPLING, check_lengths, norm_report, site, steering_vector,
                       tokens_with_bos, x_vector)
from .vector_io import save

MAX_BODY = 16_384          # bytes of JSON a request may send
MAX_NEW_TOKENS = 200       # per completion
MAX_ROWS = 4               # completions of each kind
MAX_TEXT = 2_000           # characters of a prompt, plus or minus
LOCK_WAIT_S = 2.0          # how long a request waits for the one before it to let go of the model
TOKEN_HEADER = "X-ActAdd-Token"


class BadRequest(ValueError):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------
# What the page asks for, checked


@dataclass(frozen=True)
class Settings:
    prompt: str = "I went up to my friend and said"
    plus: str = "Love"
    minus: str = "Hate"
    layer: int = 0
    coeff: float = 5.0
    align: str = "front"
    pad: str = "space"
    n: int = 1
    seed: int = 0
    max_new_tokens: int = 40
    temperature: float = PAPER_SAMPLING["temperature"]
    top_p: float = PAPER_SAMPLING["top_p"]
    freq_penalty: float = PAPER_SAMPLING["freq_penalty"]
    words: str = ""            # the grid's topic words: effectiveness over their tokens (' word', one token each)
    pairs: str = ""            # 'plus<TAB>minus' lines: the mean of their differences instead of plus - minus
    reading: str = "actadd"    # with pairs: ActAdd's per-position matrix, or a direction (last, mean)
    method: str = "actadd"     # or another steering method (actadd.methods), from the pairs or plus - minus
    target: str = ""           # mean-centring: target texts, one a line
    general: str = ""          # mean-centring: general texts, one a line

    @classmethod
    def from_json(cls, body: dict, n_layer: int) -> Settings:
        """The settings a request sends, every field checked (name, type, range); absent ones
        keep their defaults."""
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object of settings")
        known = cls.__dataclass_fields__
        unknown = sorted(set(body) - set(known))
        if unknown:
            raise BadRequest(f"unknown setting(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(known)}")
        s = cls(**body)
        for name in ("prompt", "plus", "minus", "words", "pairs", "target", "general"):
            text = getattr(s, name)
            most = MAX_TEXT * (4 if name in ("pairs", "target", "general") else 1)
            if not isinstance(text, str) or len(text) > most:
                raise BadRequest(f"{name}: expected text of at most {most} characters")
        if s.method not in METHODS:
            raise BadRequest(f"method: one of {', '.join(METHODS)} (got {s.method!r})")
        if s.method == "mean-centring" and not (s.texts("target") and s.texts("general")):
            raise BadRequest("mean-centring: give target and general texts, one a line")
        if s.method != "actadd" and s.reading != "actadd":
            raise BadRequest(f"reading: how the actadd method reads pairs; {s.method} reads each pair's last token")
        _integer(s, "layer", 0, n_layer - 1)
        _integer(s, "n", 1, MAX_ROWS)
        _integer(s, "seed", 0, 2**32 - 1)
        _integer(s, "max_new_tokens", 1, MAX_NEW_TOKENS)
        _number(s, "coeff", -1000.0, 1000.0)
        _number(s, "temperature", 0.0, 10.0)
        _number(s, "top_p", 1e-6, 1.0)
        _number(s, "freq_penalty", -10.0, 10.0)
        if s.align not in ALIGNMENTS or s.pad not in PADDINGS or s.reading not in READINGS:
            raise BadRequest(f"align: one of {ALIGNMENTS}; pad: one of {PADDINGS}; reading: one of {READINGS} "
                             f"(got {s.align!r}, {s.pad!r}, {s.reading!r})")
        if not s.prompt:
            raise BadRequest("prompt: expected some text to complete")
        s.contrast()                                                  # the pairs' lines checked now
        return s

    def texts(self, name: str) -> list[str]:
        return [line for line in getattr(self, name).split("\n") if line.strip()]

    def contrast(self) -> list[tuple[str, str]] | None:
        """The pairs, if given (checked line by line as a pairs file is)."""
        if not self.pairs.strip():
            return None
        try:
            return parse_pairs(self.pairs.split("\n"), "pairs")
        except ValueError as e:
            raise BadRequest(str(e)) from None

    def command(self, model: str, options: dict) -> str:
        """The `actadd steer` line that prints these completions (with pairs, after writing them
        to pairs.tsv)."""
        contrast = self.contrast()
        recipe = (["--plus", self.plus, "--minus", self.minus] if contrast is None
                  else ["--pairs", "pairs.tsv"] + (["--reading", self.reading] if self.method == "actadd" else []))
        files = []
        if self.method == "mean-centring":
            recipe = ["--target", "target.txt", "--general", "general.txt"]
            files = [("target.txt", self.texts("target")), ("general.txt", self.texts("general"))]
        elif contrast is not None:
            files = [("pairs.tsv", [f"{a}\t{b}" for a, b in contrast])]
        if self.method != "actadd":
            recipe = ["--method", self.method, *recipe]
        args = ["actadd", "steer", "--model", model, *[a for k, v in options.items() for a in (f"--{k}", v)],
                "--prompt", self.prompt, *recipe, "--layer", str(self.layer),
                "--coeff", repr(float(self.coeff)), "--align", self.align, "--pad", self.pad, "-n", str(self.n),
                "--seed", str(self.seed), "--max-new-tokens", str(self.max_new_tokens),
                "--temperature", repr(float(self.temperature)), "--top-p", repr(float(self.top_p)),
                "--freq-penalty", repr(float(self.freq_penalty))]
        writes = [shlex.join(["printf", "%s\\n", *lines]) + f" > {name}" for name, lines in files]
        return " && ".join(writes + [shlex.join(args)])


def _integer(s: Settings, name: str, low: int, high: int) -> None:
    v = getattr(s, name)
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise BadRequest(f"{name}: expected an integer from {low} to {high}, got {v!r}")


def _number(s: Settings, name: str, low: float, high: float) -> None:
    v = getattr(s, name)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not low <= v <= high:
        raise BadRequest(f"{name}: expected a number from {low:g} to {high:g}, got {v!r}")


# ---------------------------------------------------------------------------------------------
# The model's side: one vector, what it does, and the completions as they come


class Steerer:
    """The loaded model and the work the page asks of it, one request at a time."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, name: str, options: dict | None = None):
        self.model, self.tokenizer, self.name, self.options = model, tokenizer, name, dict(options or {})
        self.lock = threading.Lock()

    def vector(self, s: Settings):
        """As `actadd steer` makes it: plus - minus, or the mean of the pairs' differences, or
        another method's vector (actadd.methods)."""
        contrast = s.contrast()
        if s.method != "actadd":
            return methods.make(s.method, self.model, self.tokenizer, coeff=s.coeff, layer=s.layer, pairs=contrast or (),
                                plus=s.plus, minus=s.minus, target=s.texts("target"), general=s.texts("general"))
        if contrast is None:
            additions = x_vector(self.tokenizer, s.plus, s.minus, s.coeff, s.layer, s.pad)
            return steering_vector(self.model, additions, alignment=s.align, padding=s.pad)
        vector = mean_of_pairs(self.model, self.tokenizer, contrast, s.coeff, [s.layer], s.reading, s.pad)
        return replace(vector, alignment=s.align) if s.reading == "actadd" else vector

    def inspect(self, s: Settings, vector, k: int = 10) -> dict:
        """Norms of the prompt's residual stream at every layer and of the addition at the
        chosen one, the next-token distributions with the tokens that carry the KL, and the
        vector's own logit lens at its layer."""
        from .interpret import lens

        tok, model = self.tokenizer, self.model
        names = [site(L) for L in range(model.config.n_layer)]
        _, cache = model.run_with_cache(tokens_with_bos(tok, s.prompt), names=names)
        by_layer = [float(np.linalg.norm(model.backend.to_host(cache[n])[0], axis=-1).mean()) for n in names]
        reports = norm_report(model, tok, vector, s.prompt, alignment=s.align)
        report = next((r for r in reports if r.layer == s.layer), reports[0])  # an ablation's: where it was read
        nt = next_token(model, tok, s.prompt, vector)
        return {
            "resid_norm_by_layer": by_layer,                 # mean over the prompt's positions
            "positions": report.tokens, "steering_norm": report.steering.tolist(),
            "resid_norm": report.residual.tolist(), "ratio": report.ratio.tolist(),
            "kl": nt.kl,
            "next_token": [{"token": tok.token_str(i), "kl": c, "steered": q, "unsteered": p}
                           for i, c, q, p, _ in nt.top(k)],
            "lens": [{"position": row["position"], "promoted": [t for t, _ in row["top"]],
                      "demoted": [t for t, _ in row["bottom"]]} for row in lens(model, tok, vector, k=k).vector],
            "command": s.command(self.name, self.options),
        }

    def completions(self, s: Settings, vector):
        """A generator of (kind, texts) after each new token of either kind, alternating: `actadd
        steer`'s sampling (rows from default_rng([seed, row]), the same for both kinds) one step at
        a time. The settings are checked here, when it is made (a prompt too long for the new
        tokens, as `actadd steer` refuses it), not at its first step, inside a stream."""
        tok = self.tokenizer
        ids = tokens_with_bos(tok, s.prompt)
        check_lengths(np.array([len(ids)]), vector.length, vector.placement(s.align))
        common = dict(max_new_tokens=s.max_new_tokens, seed=s.seed, eos_token_id=tok.eos_token_id,
                      sampling=Sampling(s.temperature, None, s.top_p, s.freq_penalty))
        rows = [ids] * s.n
        streams = {"unsteered": minigpt.stream(self.model, rows, **common),
                   "steered": minigpt.stream(self.model, rows, fwd_hooks=vector.hooks(len(ids), s.align), **common)}
        return self._alternate(streams, len(rows))

    def _alternate(self, streams: dict, rows: int):
        new = {kind: [[] for _ in range(rows)] for kind in streams}
        for steps in zip_longest(*streams.values()):
            for kind, step in zip(streams, steps):
                if step is None:
                    continue
                for row, token in zip(new[kind], step):
                    if token is not None:
                        row.append(token)
                yield kind, [self.tokenizer.decode(t) for t in new[kind]]

    def grid(self, s: Settings) -> dict:
        """Next-token KL after the prompt (and effectiveness over the words' tokens) for every
        layer (at most 12, evenly spaced) x 7 coefficients around the chosen one, each cell a row
        of one batched pass (measure.sweep, with row_hooks)."""
        from .measure import sweep

        n = self.model.config.n_layer
        layers = sorted({round(i * (n - 1) / 11) for i in range(12)}) if n > 12 else list(range(n))
        c = abs(s.coeff) or 4.0
        coeffs = [f * c for f in (-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0)]
        topic = []
        for word in s.words.replace(",", " ").split():
            ids = self.tokenizer.encode(" " + word)
            if len(ids) != 1:
                raise ValueError(f"words: {word!r} is {len(ids)} tokens ({' + '.join(map(repr, self.tokenizer.token_strs(ids)))}); "
                                 "effectiveness counts single tokens")
            topic += ids
        contrast = s.contrast()
        recipe = {"plus": s.plus, "minus": s.minus} if contrast is None and s.method == "actadd" else {
            "plus": None, "minus": None, "unit_vector": lambda L: self.vector(replace(s, layer=L, coeff=1.0))}
        rows = sweep(self.model, self.tokenizer, layers=layers, coeffs=coeffs, alignments=(s.align,), padding=s.pad,
                     prompt=s.prompt, topic_tokens=topic, progress=False, **recipe)
        metric = "effectiveness" if topic else "kl"
        return {"layers": layers, "coeffs": coeffs, "metric": metric,
                "values": [[next(r[metric] for r in rows if r["layer"] == L and r["coeff"] == k) for k in coeffs]
                           for L in layers]}

    def vector_file(self, s: Settings, suffix: str = ".safetensors") -> bytes:
        """The vector as `actadd steer --save` writes it: .safetensors, or .gguf (a llama.cpp
        control vector, for a direction: pairs read at the last or mean token)."""
        vector = self.vector(s)
        if suffix == ".gguf" and s.method == "actadd" and s.reading == "actadd":
            raise ValueError("a .gguf control vector holds one direction per layer; ActAdd's vector is a matrix of "
                             "positions: give pairs with reading 'last' or 'mean', or download .safetensors")
        with tempfile.TemporaryDirectory() as folder:
            return save(vector, Path(folder) / f"vector{suffix}").read_bytes()


# ---------------------------------------------------------------------------------------------
# HTTP


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, steerer: Steerer, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        super().__init__((host, port), Handler)
        self.steerer, self.token = steerer, token or secrets.token_urlsafe(24)
        port = self.server_address[1]
        names = {"127.0.0.1", "localhost", "[::1]"} | (_own_names() if host in ANY else {host})
        self.hosts = {f"{n}:{port}" for n in names}
        self.page = resources.files("actadd").joinpath("static/serve.html").read_text(encoding="utf-8")

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"http://{'127.0.0.1' if host in ANY else host}:{self.server_address[1]}/?token={self.token}"


ANY = ("0.0.0.0", "::", "")      # bound to every address


def _own_names() -> set[str]:
    """This machine's name and addresses: the Host headers a page opened from the network sends
    when the server listens on every address."""
    import socket

    names = {socket.gethostname()}
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except OSError:
        pass
    return names


class Handler(BaseHTTPRequestHandler):
    server: Server
    server_version = "actadd-serve"

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass                               # the page is the log; errors are answered as JSON

    def do_GET(self):
        self._answer(self._get)

    def do_POST(self):
        self._answer(self._post)

    # --- the rules -----------------------------------------------------------------------------

    def _answer(self, route):
        try:
            self._check_origin()
            route(urlsplit(self.path))
        except BadRequest as e:
            self._json({"error": str(e)}, e.status)
        except (BrokenPipeError, ConnectionResetError):
            pass                           # the tab closed
        except Exception as e:             # a bug: said to the page, not a dropped connection
            if not getattr(self, "_streaming", False):
                self._json({"error": f"internal error: {type(e).__name__}: {e}"}, HTTPStatus.INTERNAL_SERVER_ERROR)
            else:
                self._event("error", {"error": f"internal error: {type(e).__name__}: {e}"})
            raise

    def _check_origin(self):
        host = self.headers.get("Host", "")
        if host not in self.server.hosts:
            raise BadRequest(f"Host {host!r} is not this server ({', '.join(sorted(self.server.hosts))})",
                             HTTPStatus.FORBIDDEN)
        origin = self.headers.get("Origin")
        if origin is not None and origin not in {f"http://{h}" for h in self.server.hosts}:
            raise BadRequest(f"Origin {origin!r}: requests come from this server's own page only", HTTPStatus.FORBIDDEN)

    def _check_token(self, url):
        given = self.headers.get(TOKEN_HEADER) or parse_qs(url.query).get("token", [""])[0]
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            raise BadRequest("a missing or wrong token: open the URL `actadd serve` printed", HTTPStatus.FORBIDDEN)

    def _body(self) -> dict:
        length = self.headers.get("Content-Length")
        if length is None or not (length.isascii() and length.isdigit()):  # '²' is a digit to isdigit
            raise BadRequest("a request body needs a Content-Length", HTTPStatus.LENGTH_REQUIRED)
        if int(length) > MAX_BODY:
            raise BadRequest(f"a body of {int(length):,} bytes; at most {MAX_BODY:,}", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        try:
            return json.loads(self.rfile.read(int(length)) or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not JSON: {e}") from None
        except RecursionError:                        # e.g. 10,000 nested '[': the parser's stack, not ours
            raise BadRequest("the body nests too deeply to be settings (JSON arrays or objects inside each other "
                             "thousands of times)") from None

    def _settings(self) -> Settings:
        try:
            return Settings.from_json(self._body(), self.server.steerer.model.config.n_layer)
        except TypeError as e:
            raise BadRequest(str(e)) from None

    # --- the routes ----------------------------------------------------------------------------

    def _get(self, url):
        self._check_token(url)
        if url.path != "/":
            raise BadRequest(f"no page {url.path!r}", HTTPStatus.NOT_FOUND)
        s = self.server.steerer
        page = (self.server.page.replace("__MODEL__", json.dumps(s.name))
                .replace("__DEFAULTS__", json.dumps(asdict(Settings())))
                .replace("__LIMITS__", json.dumps({"n_layer": s.model.config.n_layer, "max_new_tokens": MAX_NEW_TOKENS,
                                                    "max_rows": MAX_ROWS})))
        self._send(HTTPStatus.OK, "text/html; charset=utf-8", page.encode())

    def _post(self, url):
        self._check_token(url)
        routes = {"/api/steer": self._steer, "/api/vector": self._vector, "/api/grid": self._grid}
        if url.path not in routes:
            raise BadRequest(f"no endpoint {url.path!r}", HTTPStatus.NOT_FOUND)
        settings = self._settings()
        steerer = self.server.steerer
        # A request sent the moment the previous answer arrived may find that request's thread
        # still releasing the lock: it waits that moment out; a run in progress is a 409.
        if not steerer.lock.acquire(timeout=LOCK_WAIT_S):
            raise BadRequest("busy: the model is running another request; try again when it ends",
                             HTTPStatus.CONFLICT)
        try:
            routes[url.path](steerer, settings)
        finally:
            steerer.lock.release()

    def _grid(self, steerer: Steerer, s: Settings):
        self._json(_refusing(lambda: steerer.grid(s)))

    def _vector(self, steerer: Steerer, s: Settings):
        suffix = "." + (parse_qs(urlsplit(self.path).query).get("format", ["safetensors"])[0])
        if suffix not in (".safetensors", ".gguf"):
            raise BadRequest(f"format {suffix[1:]!r}: safetensors or gguf")
        data = _refusing(lambda: steerer.vector_file(s, suffix))
        self._send(HTTPStatus.OK, "application/octet-stream", data,
                   {"Content-Disposition": f'attachment; filename="actadd-vector{suffix}"'})

    def _steer(self, steerer: Steerer, s: Settings):
        started = time.perf_counter()
        vector = _refusing(lambda: steerer.vector(s))
        inspection = _refusing(lambda: steerer.inspect(s, vector))   # a prompt shorter than the vector fails here
        completions = _refusing(lambda: steerer.completions(s, vector))  # checked before the stream starts
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self._streaming = True
        self._event("inspect", inspection)
        count = 0
        for kind, texts in completions:                                    # a closed tab: a write fails
            count += 1
            self._event("token", {"kind": kind, "texts": texts, "ms": 1000 * (time.perf_counter() - started)})
        self._event("done", {"ms": 1000 * (time.perf_counter() - started), "events": count})

    # --- writing -------------------------------------------------------------------------------

    def _event(self, name: str, data: dict):
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()

    def _json(self, data: dict, status=HTTPStatus.OK):
        self._send(status, "application/json", json.dumps(data).encode())

    def _send(self, status, content_type: str, data: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _refusing(work):
    """work(), with the library's refusals (a prompt shorter than the vector, ...) as 400s."""
    try:
        return work()
    except ValueError as e:
        raise BadRequest(str(e)) from None


def serve(steerer: Steerer, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
          out=sys.stdout) -> None:
    """Serve until interrupted, printing the URL with its token."""
    server = Server(steerer, host, port, token)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach this machine and has the URL's token can "
              "run the model (the token is the only guard; use a trusted network)", file=sys.stderr)
    others = sorted(h for h in server.hosts if h.rsplit(":", 1)[0] not in ("127.0.0.1", "localhost", "[::1]"))
    also = "".join(f"\n  http://{h}/?token={server.token}" for h in others)
    print(f"actadd serve: {steerer.model} from {steerer.name}\n  {server.url}{also}\n(Ctrl-C stops it)", file=out,
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
