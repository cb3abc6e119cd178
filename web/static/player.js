// Sigil web console: replays an SSH session recording (asciicast v2) in a
// small terminal emulator of our own: cursor movement, erasing, scrolling
// and wrapping are applied; colours and modes are ignored, so the replay
// shows the text as the user saw it, in plain monochrome.
"use strict";

(function () {
  const root = document.querySelector(".player[data-cast]");
  if (!root) return;
  const part = (n) => root.querySelector('[data-player="' + n + '"]');
  const screen = part("screen"), status = part("status");
  const playBtn = part("play"), restartBtn = part("restart"), speedSel = part("speed");
  // Pauses longer than this are shortened, as asciinema's idle limit does.
  const idleLimit = 2;

  function Term(cols, rows) { this.x = 0; this.y = 0; this.state = 0; this.params = ""; this.resize(cols, rows); }
  Term.prototype.resize = function (cols, rows) {
    this.cols = Math.max(1, Math.min(cols | 0 || 80, 500));
    this.rows = Math.max(1, Math.min(rows | 0 || 24, 200));
    const old = this.lines || [];
    this.lines = [];
    for (let i = 0; i < this.rows; i++) {
      const l = old[i] || [];
      l.length = Math.min(l.length, this.cols);
      this.lines.push(l);
    }
    this.x = Math.min(this.x, this.cols - 1);
    this.y = Math.min(this.y, this.rows - 1);
  };
  Term.prototype.lf = function () {
    if (this.y === this.rows - 1) { this.lines.shift(); this.lines.push([]); } else this.y++;
  };
  Term.prototype.put = function (ch) {
    if (this.x >= this.cols) { this.x = 0; this.lf(); }
    const line = this.lines[this.y];
    while (line.length < this.x) line.push(" ");
    line[this.x] = ch;
    this.x++;
  };
  Term.prototype.blank = function (line, from, to) {
    for (let i = from; i < to && i < line.length; i++) line[i] = " ";
  };
  Term.prototype.csi = function (final) {
    if (/^[?>=]/.test(this.params)) return; // private modes: ignored
    const p = this.params.split(";").map((v) => parseInt(v, 10));
    const n = (i) => (isNaN(p[i]) || p[i] === 0 ? 1 : p[i]);
    const m = isNaN(p[0]) ? 0 : p[0];
    const line = this.lines[this.y];
    switch (final) {
      case "A": this.y = Math.max(0, this.y - n(0)); break;
      case "B": this.y = Math.min(this.rows - 1, this.y + n(0)); break;
      case "C": this.x = Math.min(this.cols - 1, this.x + n(0)); break;
      case "D": this.x = Math.max(0, this.x - n(0)); break;
      case "G": this.x = Math.min(this.cols - 1, n(0) - 1); break;
      case "d": this.y = Math.min(this.rows - 1, n(0) - 1); break;
      case "H": case "f":
        this.y = Math.min(this.rows - 1, n(0) - 1);
        this.x = Math.min(this.cols - 1, n(1) - 1);
        break;
      case "J":
        if (m === 2 || m === 3) { for (let i = 0; i < this.rows; i++) this.lines[i] = []; }
        else if (m === 1) { for (let i = 0; i < this.y; i++) this.lines[i] = []; this.blank(line, 0, this.x + 1); }
        else { line.length = Math.min(line.length, this.x); for (let i = this.y + 1; i < this.rows; i++) this.lines[i] = []; }
        break;
      case "K":
        if (m === 2) this.lines[this.y] = [];
        else if (m === 1) this.blank(line, 0, this.x + 1);
        else line.length = Math.min(line.length, this.x);
        break;
      case "P": line.splice(this.x, n(0)); break;
      case "X": this.blank(line, this.x, this.x + n(0)); break;
      case "@":
        while (line.length < this.x) line.push(" ");
        line.splice(this.x, 0, ...new Array(n(0)).fill(" "));
        line.length = Math.min(line.length, this.cols);
        break;
    }
  };
  Term.prototype.write = function (s) {
    for (const ch of s) {
      const c = ch.codePointAt(0);
      switch (this.state) {
        case 0:
          if (c === 0x1b) this.state = 1;
          else if (c === 0x0d) this.x = 0;
          else if (c === 0x0a || c === 0x0b || c === 0x0c) this.lf();
          else if (c === 0x08) this.x = Math.max(0, this.x - 1);
          else if (c === 0x09) this.x = Math.min(this.cols - 1, (this.x + 8) & ~7);
          else if (c >= 0x20 && c !== 0x7f) this.put(ch);
          break;
        case 1: // after ESC
          this.state = 0;
          if (ch === "[") { this.state = 2; this.params = ""; }
          else if ("]P_^X".includes(ch)) this.state = 3; // strings: skip to BEL or ST
          else if ("()*+#%".includes(ch)) this.state = 4; // one more byte
          else if (ch === "D") this.lf();
          else if (ch === "E") { this.x = 0; this.lf(); }
          else if (ch === "M") {
            if (this.y === 0) { this.lines.pop(); this.lines.unshift([]); } else this.y--;
          }
          break;
        case 2: // CSI parameters until the final byte
          if (c >= 0x40 && c <= 0x7e) { this.csi(ch); this.state = 0; }
          else if (this.params.length < 64) this.params += ch;
          break;
        case 3:
          if (c === 0x07) this.state = 0;
          else if (c === 0x1b) this.state = 5;
          break;
        case 4: this.state = 0; break;
        case 5: this.state = ch === "\\" ? 0 : 3; break;
      }
    }
  };
  Term.prototype.text = function () {
    return this.lines.map((l) => l.join("").replace(/\s+$/, "")).join("\n");
  };

  function clock(t) {
    const s = Math.floor(t);
    return Math.floor(s / 60) + ":" + String(s % 60).padStart(2, "0");
  }

  let header = null, events = [], term = null, next = 0, at = 0, timer = null, playing = false;

  function render() { screen.textContent = term.text(); }
  function show() { status.textContent = clock(at) + " / " + clock(events.length ? events[events.length - 1].t : 0); }

  function reset() {
    term = new Term(header.width, header.height);
    next = 0;
    at = 0;
    render();
    show();
  }

  function step() {
    timer = null;
    // Apply every event due now, then wait for the next one.
    let changed = false;
    while (next < events.length && events[next].t <= at + 1e-6) {
      const ev = events[next++];
      if (ev.code === "o") { term.write(ev.data); changed = true; }
      else if (ev.code === "r") {
        const [cols, rows] = String(ev.data).split("x").map((v) => parseInt(v, 10));
        term.resize(cols, rows);
        changed = true;
      }
    }
    if (changed) render();
    show();
    if (next >= events.length) { playing = false; playBtn.textContent = "Play"; return; }
    const wait = events[next].t - at;
    at = events[next].t;
    timer = setTimeout(step, (1000 * wait) / (parseFloat(speedSel.value) || 1));
  }

  function play() {
    if (!header) return;
    if (playing) {
      playing = false;
      clearTimeout(timer);
      playBtn.textContent = "Play";
      return;
    }
    if (next >= events.length) reset();
    playing = true;
    playBtn.textContent = "Pause";
    step();
  }

  playBtn.addEventListener("click", play);
  restartBtn.addEventListener("click", () => {
    clearTimeout(timer);
    playing = false;
    playBtn.textContent = "Play";
    if (header) reset();
  });

  fetch(root.dataset.cast, { credentials: "same-origin", headers: { "Accept": "application/x-asciicast" } })
    .then(async (resp) => {
      const body = await resp.text();
      if (!resp.ok) {
        let msg = "request failed (" + resp.status + ")";
        try { msg = JSON.parse(body).error || msg; } catch (e) { /* not JSON */ }
        throw new Error(msg);
      }
      const lines = body.split("\n").filter((l) => l.trim() !== "");
      header = JSON.parse(lines[0]);
      let t = 0, shift = 0;
      for (const line of lines.slice(1)) {
        let ev;
        try { ev = JSON.parse(line); } catch (e) { continue; }
        if (!Array.isArray(ev) || ev.length < 3) continue;
        // Shorten long pauses, keeping the order of events.
        const raw = Number(ev[0]) - shift;
        if (raw - t > idleLimit) shift += raw - t - idleLimit;
        t = Number(ev[0]) - shift;
        events.push({ t: t, code: ev[1], data: ev[2] });
      }
      reset();
      status.textContent = "Ready: " + clock(t) + " (pauses over " + idleLimit + " s shortened)";
      screen.dataset.loaded = String(events.length);
    })
    .catch((err) => { status.textContent = "Cannot load the recording: " + err.message; });
})();
