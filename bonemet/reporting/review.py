"""``bonemet review OUT``: one page over a folder of predictions (``predict --batch``) that lists every case with
its verdict, sorts and filters them, opens each case's report (and its viewer), and takes a reviewer's mark for
each lesion: confirmed, rejected or unsure.

The page is ``OUT/review.html``. Opened from disk it keeps the marks in the browser and offers them as a CSV
download; served by ``bonemet review OUT --serve`` (the standard library's HTTP server, bound to 127.0.0.1 unless
``--host`` says otherwise) it saves them to ``OUT/review_marks.csv`` and reads them back. Nothing of the
predictions is changed. Case data reach the page as JSON read by ``textContent``, never as markup.
"""

from __future__ import annotations

import csv
import json
import mimetypes
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..errors import BonemetError
from ..fileio import MARKER, add_marker_entries, output_kind, read_json, write_csv, write_text
from .viewer import json_for_script

PAGE = "review.html"
MARKS = "review_marks.csv"
MARK_FIELDS = ["case", "lesion", "mark", "reviewed"]
CHOICES = ("confirmed", "rejected", "unsure")
BATCH_KIND = "predict-batch"
MAX_BODY = 1 << 20  # bytes of marks one request may send


def check_batch_folder(out: Path) -> None:
    if not out.is_dir():
        raise BonemetError("not a folder", out)
    if output_kind(out) != BATCH_KIND:
        raise BonemetError("not a folder of predictions written by 'bonemet predict --batch'", out)


def collect_cases(out: Path) -> list[dict]:
    """Every finished case of ``out``: its summary figures, the path of its report and its lesions."""
    cases = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "summary.json").is_file():
            continue
        s = read_json(folder / "summary.json", "case summary")
        lesions = read_json(folder / "lesions.json", "lesion list") if (folder / "lesions.json").is_file() else []
        cases.append({"case": folder.name, "verdict": s.get("verdict"), "probability": s.get("probability"),
                      "lesions": s.get("lesions"), "volume_ml": s.get("total_lesion_volume_ml"),
                      "seconds": (s.get("timings") or {}).get("total s"),
                      "report": f"{folder.name}/report.html" if (folder / "report.html").is_file() else None,
                      "lesion_list": [{k: les.get(k) for k in ("id", "type", "site", "volume_ml", "diameter_mm",
                                                                 "slice_start", "slice_end", "max_probability")}
                                      for les in lesions]})
    return cases


def read_marks(out: Path) -> list[dict]:
    """The saved marks (``OUT/review_marks.csv``), or none."""
    path = out / MARKS
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [{"case": r["case"], "lesion": int(r["lesion"]), "mark": r["mark"], "reviewed": r.get("reviewed", "")}
                for r in csv.DictReader(fh)]


def checked_marks(marks: object, cases: list[dict]) -> list[dict]:
    """``marks`` (from the page) as rows for ``OUT/review_marks.csv``, each naming a lesion that exists; else one
    clear error."""
    known = {(c["case"], les["id"]) for c in cases for les in c["lesion_list"]}
    if not isinstance(marks, list):
        raise BonemetError("marks must be a list of {case, lesion, mark}")
    rows, stamp = [], time.strftime("%Y-%m-%dT%H:%M:%S%z")
    for m in marks:
        if not isinstance(m, dict) or m.get("mark") not in CHOICES or (m.get("case"), m.get("lesion")) not in known:
            raise BonemetError(f"not a mark of a lesion of these cases: {json.dumps(m)[:200]}")
        rows.append({"case": m["case"], "lesion": m["lesion"], "mark": m["mark"],
                     "reviewed": m.get("reviewed") or stamp})
    return sorted(rows, key=lambda r: (r["case"], r["lesion"]))


def save_marks(out: Path, marks: object) -> int:
    """Write the page's marks to ``OUT/review_marks.csv``; a mark that did not change keeps its time."""
    before = {(r["case"], r["lesion"], r["mark"]): r["reviewed"] for r in read_marks(out)}
    rows = [{**r, "reviewed": before.get((r["case"], r["lesion"], r["mark"]), r["reviewed"])}
            for r in checked_marks(marks, collect_cases(out))]
    write_csv(out / MARKS, rows, MARK_FIELDS)
    add_marker_entries(out, [MARKS])
    return len(rows)


CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;font-size:.85em;width:100%}td,th{border:1px solid #ccc;padding:3px 7px}
th{background:#f3f3f3;cursor:pointer;user-select:none}td.n{text-align:right}.pos{color:#8a1010;font-weight:600}
.lesions td{background:#fafafa}.note{font-size:.8em;color:#666}.bar{display:flex;gap:1em;margin:.6em 0}
#status{font-size:.85em;color:#145a1c}"""

SCRIPT = """(function () {
  const data = JSON.parse(document.getElementById('review-data').textContent);
  const served = location.protocol.startsWith('http');
  const marks = new Map();  // "case\\u0000lesion" -> mark
  const key = (c, l) => c + '\\u0000' + l;
  const store = 'bonemet-review:' + data.folder;
  const status = document.getElementById('status');
  let sortKey = 'case', sortUp = true;
  function el(tag, text, cls) { const e = document.createElement(tag); if (text !== undefined && text !== null)
    e.textContent = String(text); if (cls) e.className = cls; return e; }
  function render() {
    const body = document.getElementById('cases');
    body.replaceChildren();
    const text = document.getElementById('filter').value.toLowerCase();
    const verdict = document.getElementById('verdict').value;
    const rows = data.cases.filter(c => c.case.toLowerCase().includes(text) && (!verdict || c.verdict === verdict));
    rows.sort((a, b) => { const x = a[sortKey], y = b[sortKey];
      const r = (typeof x === 'number' && typeof y === 'number') ? x - y : String(x).localeCompare(String(y));
      return sortUp ? r : -r; });
    for (const c of rows) {
      const tr = el('tr'); tr.dataset.case = c.case;
      const name = el('td'); const a = el('a', c.case);
      if (c.report) { a.href = c.report; a.target = '_blank'; }
      name.append(a); tr.append(name, el('td', c.verdict, c.verdict === 'metastatic' ? 'pos' : ''),
        el('td', c.probability, 'n'), el('td', c.lesions, 'n'), el('td', c.volume_ml, 'n'), el('td', c.seconds, 'n'));
      body.append(tr);
      if (!c.lesion_list.length) continue;
      const sub = el('tr', null, 'lesions'), cell = el('td'); cell.colSpan = 6;
      const t = el('table');
      const head = el('tr');
      for (const h of ['lesion', 'type', 'site', 'volume (mL)', 'diameter (mm)', 'slices', 'max probability', 'mark'])
        head.append(el('th', h));
      t.append(head);
      for (const les of c.lesion_list) {
        const r = el('tr');
        const sel = el('select'); sel.dataset.case = c.case; sel.dataset.lesion = les.id;
        for (const m of ['', ...data.choices]) { const o = el('option', m || '-'); o.value = m; sel.append(o); }
        sel.value = marks.get(key(c.case, les.id)) || '';
        sel.addEventListener('change', () => { if (sel.value) marks.set(key(c.case, les.id), sel.value);
          else marks.delete(key(c.case, les.id)); keep(); });
        const m = el('td'); m.append(sel);
        const id = el('td', null, 'n'), go = el('a', les.id);
        if (c.report) { go.href = c.report + '#lesion-' + les.id; go.target = '_blank'; }
        id.append(go);
        r.append(id, el('td', les.type), el('td', les.site), el('td', les.volume_ml, 'n'),
          el('td', les.diameter_mm, 'n'), el('td', les.slice_start + '-' + les.slice_end, 'n'),
          el('td', les.max_probability, 'n'), m);
        t.append(r);
      }
      cell.append(t); sub.append(cell); body.append(sub);
    }
    document.getElementById('count').textContent = rows.length + ' of ' + data.cases.length + ' cases';
  }
  function list() { return Array.from(marks, ([k, m]) => { const [c, l] = k.split('\\u0000');
    return {case: c, lesion: Number(l), mark: m}; }); }
  function keep() { localStorage.setItem(store, JSON.stringify(list())); status.textContent = 'unsaved changes'; }
  function load(rows) { marks.clear(); for (const r of rows) marks.set(key(r.case, r.lesion), r.mark); }
  async function save() {
    if (served) {
      const r = await fetch('api/marks', {method: 'POST', headers: {'Content-Type': 'application/json'},
                                          body: JSON.stringify(list())});
      const answer = await r.json();
      status.textContent = r.ok ? 'saved ' + answer.saved + ' mark(s) to ' + data.marks_file : 'not saved: ' + answer.error;
    } else {
      const lines = ['case,lesion,mark'].concat(list().map(m => [m.case, m.lesion, m.mark].join(',')));
      const a = document.getElementById('download');
      a.href = URL.createObjectURL(new Blob([lines.join('\\n') + '\\n'], {type: 'text/csv'}));
      a.download = data.marks_file; a.hidden = false;
      status.textContent = 'opened from disk: the marks are kept in this browser; download them as CSV';
    }
  }
  document.querySelectorAll('th[data-key]').forEach(th => th.addEventListener('click', () => {
    sortUp = sortKey === th.dataset.key ? !sortUp : true; sortKey = th.dataset.key; render(); }));
  document.getElementById('filter').addEventListener('input', render);
  document.getElementById('verdict').addEventListener('change', render);
  document.getElementById('save').addEventListener('click', save);
  (async function () {
    if (served) { const r = await fetch('api/marks'); load(await r.json()); }
    else { load(JSON.parse(localStorage.getItem(store) || '[]')); }
    render();
    document.body.dataset.ready = 'true';
  })().catch(e => { status.textContent = 'could not read the marks: ' + e; console.error(e); });
})();"""


def write_review_page(out: str | Path) -> Path:
    """Write ``OUT/review.html`` for the finished cases of a ``predict --batch`` folder."""
    out = Path(out)
    check_batch_folder(out)
    cases = collect_cases(out)
    data = {"folder": out.resolve().name, "cases": cases, "choices": list(CHOICES), "marks_file": MARKS}
    heads = [("case", "case"), ("verdict", "verdict"), ("probability", "probability"), ("lesions", "lesions"),
             ("volume_ml", "lesion volume (mL)"), ("seconds", "seconds")]
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'><title>bonemet review</title>"
            f"<style>{CSS}</style></head><body><h1>bonemet: review of {len(cases)} case(s)</h1>"
            "<p class='note'>Research software, not a medical device. Click a column to sort; the case name opens "
            "its report and viewer. Mark each lesion, then save the marks (to review_marks.csv when served by "
            "'bonemet review OUT --serve'; as a CSV download when opened from disk).</p>"
            "<div class='bar'><label>case <input id='filter'></label><select id='verdict'>"
            "<option value=''>every verdict</option><option>metastatic</option><option>no metastasis found</option>"
            "</select><span id='count'></span><button id='save'>save marks</button>"
            "<a id='download' hidden>review_marks.csv</a><span id='status'></span></div><table><thead><tr>"
            + "".join(f"<th data-key='{k}'>{label}</th>" for k, label in heads)
            + "</tr></thead><tbody id='cases'></tbody></table>"
            f"<script type='application/json' id='review-data'>{json_for_script(data)}</script>"
            f"<script>{SCRIPT}</script></body></html>")
    write_text(out / PAGE, page)
    add_marker_entries(out, [PAGE])
    return out / PAGE


class _Handler(BaseHTTPRequestHandler):
    """Files of the review folder (read only) and the marks (``api/marks``)."""

    root: Path
    lock = threading.Lock()

    def log_message(self, *args) -> None:  # a quiet server: the page says what happened
        return

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: object) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/api/marks":
            return self._json(HTTPStatus.OK, read_marks(self.root))
        rel = path.lstrip("/") or PAGE
        target = (self.root / rel).resolve()
        if (not target.is_relative_to(self.root) or not target.is_file() or target.name == MARKER
                or any(p.startswith(".") for p in target.relative_to(self.root).parts)):
            return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
        ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        self._send(HTTPStatus.OK, target.read_bytes(), ctype)

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != "/api/marks":
            return self._send(HTTPStatus.NOT_FOUND, b"not found", "text/plain")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": f"a request of up to {MAX_BODY} bytes, with its length"})
        try:
            marks = json.loads(self.rfile.read(length) or b"null")
            with self.lock:
                saved = save_marks(self.root, marks)
        except (ValueError, BonemetError) as exc:
            return self._json(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        self._json(HTTPStatus.OK, {"saved": saved})


def make_server(out: str | Path, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """The review server of ``out`` (its page written first), not yet serving; port 0 picks a free one."""
    out = Path(out).resolve()
    write_review_page(out)
    handler = type("ReviewHandler", (_Handler,), {"root": out})
    try:
        return ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise BonemetError(f"cannot serve on {host}:{port} ({exc.strerror or exc})") from None
