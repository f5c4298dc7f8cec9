
(function () {
  "use strict";
  function tokText(vocab, id) {
    var t = vocab[id];
    return t === undefined ? "?" : t.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5");
  }
  function fmt(v) { return v === null || v === undefined ? "\u2013" : (Math.round(v * 1000) / 1000).toString(); }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function histogram(counts, vmax) {
    var ns = "http://www.w3.org/2000/svg", w = 320, h = 80, top = Math.max.apply(null, counts) || 1;
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", w); svg.setAttribute("height", h + 16); svg.setAttribute("class", "hist");
    var bw = w / counts.length;
    counts.forEach(function (c, i) {
      var r = document.createElementNS(ns, "rect"), bh = c ? Math.max(1, h * Math.sqrt(c / top)) : 0;
      r.setAttribute("x", i * bw + 1); r.setAttribute("width", bw - 2);
      r.setAttribute("y", h - bh); r.setAttribute("height", bh); r.setAttribute("fill", "#58a");
      var t = document.createElementNS(ns, "title"); t.textContent = c + " codes in bin " + (i + 1);
      r.appendChild(t); svg.appendChild(r);
    });
    [["0", 0, "start"], [fmt(vmax), w, "end"]].forEach(function (a) {
      var t = document.createElementNS(ns, "text");
      t.setAttribute("x", a[1]); t.setAttribute("y", h + 12); t.setAttribute("font-size", "10"); t.setAttribute("text-anchor", a[2]);
      t.textContent = a[0]; svg.appendChild(t);
    });
    return svg;
  }
  function setup(root) {
    var data = JSON.parse(document.getElementById(root.getAttribute("data-src")).textContent);
    var vocab = data.vocab, feats = data.features;
    feats.forEach(function (f) {
      var words = (f.contexts || []).map(function (c) { return tokText(vocab, c.tokens[c.at]); });
      f._search = ("#" + f.id + " " + (f.label ? f.label.text : "") + " " + words.join(" ")).toLowerCase();
    });
    var q = root.querySelector(".q"), sort = root.querySelector(".sort"), onlyLab = root.querySelector(".labelled"),
        onlyLive = root.querySelector(".live"), tbody = root.querySelector(".feats tbody"),
        count = root.querySelector(".count"), detail = root.querySelector(".detail");
    var LIMIT = 400;
    function key(f, k) {
      if (k === "precision" || k === "recall") { return f.label && f.label.held_out[k] !== null ? f.label.held_out[k] : -1; }
      return f[k] === undefined ? -1 : f[k];
    }
    function show(f, row) {
      Array.prototype.forEach.call(tbody.querySelectorAll("tr.sel"), function (r) { r.classList.remove("sel"); });
      if (row) { row.classList.add("sel"); }
      detail.textContent = "";
      detail.appendChild(el("h3", "", "feature " + f.id));
      detail.appendChild(el("p", "", "fires on " + fmt(100 * f.freq) + "% of tokens (" + f.fires + " times), largest activation " + fmt(f.max)));
      if (f.label) {
        var L = f.label, p = el("p", "label");
        p.appendChild(el("b", "", L.text + " "));
        p.appendChild(el("span", L.labelled ? "yes" : "no", L.labelled ? "labelled" : "not labelled"));
        p.appendChild(el("span", "", " \u2014 held-out precision " + fmt(L.held_out.precision) + ", recall " + fmt(L.held_out.recall) +
          " (fit: " + fmt(L.fit.precision) + ", " + fmt(L.fit.recall) + ")"));
        detail.appendChild(p);
      } else {
        detail.appendChild(el("p", "no", "no label candidate"));
      }
      if (f.hist) {
        detail.appendChild(el("p", "note", "activation histogram (non-zero codes; bar height \u221a count):"));
        detail.appendChild(histogram(f.hist, f.max));
      }
      detail.appendChild(el("h4", "", "top activating contexts"));
      var box = el("div", "contexts");
      (f.contexts || []).forEach(function (c) {
        var line = el("div", "ctx");
        line.appendChild(el("span", "act", fmt(c.act)));
        c.tokens.forEach(function (t, i) { line.appendChild(el(i === c.at ? "mark" : "span", "", tokText(vocab, t))); });
        box.appendChild(line);
      });
      if (!f.contexts || !f.contexts.length) { box.appendChild(el("p", "note", "never fires on the analysed tokens")); }
      detail.appendChild(box);
    }
    function render() {
      var needle = q.value.trim().toLowerCase(), k = sort.value;
      var rows = feats.filter(function (f) {
        return (!onlyLab.checked || (f.label && f.label.labelled)) && (!onlyLive.checked || f.fires > 0) &&
          (!needle || f._search.indexOf(needle) >= 0);
      });
      rows.sort(function (a, b) { return k === "id" ? a.id - b.id : (key(b, k) - key(a, k)) || (a.id - b.id); });
      tbody.textContent = "";
      rows.slice(0, LIMIT).forEach(function (f) {
        var tr = el("tr");
        [String(f.id), fmt(f.freq), fmt(f.max), f.label ? f.label.text : "",
         f.label ? fmt(f.label.held_out.precision) : "", f.label ? fmt(f.label.held_out.recall) : ""].forEach(function (v, i) {
          var td = el("td", i === 3 && f.label ? (f.label.labelled ? "yes" : "") : "", v);
          tr.appendChild(td);
        });
        tr.addEventListener("click", function () { show(f, tr); });
        tbody.appendChild(tr);
      });
      count.textContent = rows.length > LIMIT ? "showing " + LIMIT + " of " + rows.length : rows.length + " features";
    }
    // the search box re-renders on "input" only: its "change" fires on blur, which would
    // rebuild the rows under a click and swallow it
    q.addEventListener("input", render);
    [sort, onlyLab, onlyLive].forEach(function (c) { c.addEventListener("change", render); });
    render();
  }
  Array.prototype.forEach.call(document.querySelectorAll(".browser"), setup);
})();
