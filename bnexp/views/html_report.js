// bnexp report.html: parallel coordinates with brushing, curves with seed bands. Plain SVG, no library.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var brushes = {};          // axis name -> [low, high] in axis pixels (y)
  var hiddenCells = {};      // cell index -> true when switched off in the legend

  function el(name, attrs, parent) {
    var node = document.createElementNS(NS, name);
    for (var key in attrs) node.setAttribute(key, attrs[key]);
    if (parent) parent.appendChild(node);
    return node;
  }
  function text(parent, x, y, content, attrs) {
    var node = el("text", Object.assign({x: x, y: y}, attrs || {}), parent);
    node.textContent = content;
    return node;
  }
  function fmt(v) {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (v !== 0 && (Math.abs(v) >= 1e5 || Math.abs(v) < 1e-3)) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }

  // -- scales -------------------------------------------------------------------------------------
  function scaleFor(values, top, bottom) {
    var present = values.filter(function (v) { return v !== null && v !== undefined; });
    var numeric = present.length > 0 && present.every(function (v) { return typeof v === "number"; });
    var distinct = present.filter(function (v, i) { return present.indexOf(v) === i; });
    var fewIntegers = numeric && distinct.length <= 12 && present.every(function (v) { return Number.isInteger(v); });
    if (numeric && !fewIntegers) {  // a few integers (seeds, batch sizes) read better as evenly spaced values
      var lo = Math.min.apply(null, present), hi = Math.max.apply(null, present);
      var log = lo > 0 && hi / lo >= 100;
      var f = log ? Math.log10 : function (v) { return v; };
      var a = f(lo), b = f(hi);
      if (a === b) { a -= 1; b += 1; }
      var s = function (v) { return v === null || v === undefined ? null : bottom - (f(v) - a) / (b - a) * (bottom - top); };
      var ticks = [];
      for (var i = 0; i <= 4; i++) {
        var t = a + (b - a) * i / 4;
        ticks.push([log ? Math.pow(10, t) : t, bottom - i / 4 * (bottom - top)]);
      }
      s.ticks = ticks; s.kind = log ? "log" : "linear";
      return s;
    }
    var categories = [];
    present.forEach(function (v) { var k = String(v); if (categories.indexOf(k) < 0) categories.push(k); });
    categories.sort(function (x, y) {
      var nx = parseFloat(x), ny = parseFloat(y);
      return (!isNaN(nx) && !isNaN(ny)) ? nx - ny : (x < y ? -1 : x > y ? 1 : 0);
    });
    var step = categories.length > 1 ? (bottom - top) / (categories.length - 1) : 0;
    var c = function (v) {
      if (v === null || v === undefined) return null;
      var i = categories.indexOf(String(v));
      return categories.length > 1 ? bottom - i * step : (top + bottom) / 2;
    };
    c.ticks = categories.map(function (k) { return [k, c(k)]; });
    c.kind = "categorical";
    return c;
  }

  // -- parallel coordinates -----------------------------------------------------------------------
  var lines = [];
  function valueOf(run, axis) {
    return data.params.indexOf(axis) >= 0 ? run.params[axis] : run.metrics[axis];
  }
  function parallelCoordinates() {
    var host = document.getElementById("parcoords");
    var axes = data.axes;
    var width = Math.max(640, Math.min(1200, 170 * axes.length)), height = 380;
    var top = 50, bottom = height - 24, left = 70, right = width - 70;
    var svg = el("svg", {width: width, height: height, viewBox: "0 0 " + width + " " + height, id: "pc-svg"}, host);
    var x = function (i) { return axes.length > 1 ? left + i * (right - left) / (axes.length - 1) : (left + right) / 2; };
    var scales = axes.map(function (axis) {
      return scaleFor(data.runs.map(function (r) { return valueOf(r, axis); }), top, bottom);
    });
    var lineGroup = el("g", {"class": "lines"}, svg);
    data.runs.forEach(function (run) {
      var d = "", pen = false;
      axes.forEach(function (axis, i) {
        var y = scales[i](valueOf(run, axis));
        if (y === null) { pen = false; return; }
        d += (pen ? "L" : "M") + x(i).toFixed(1) + "," + y.toFixed(1);
        pen = true;
      });
      var path = el("path", {d: d, "class": "pc-line", stroke: data.cells[run.cell].color, "data-run": run.id}, lineGroup);
      var title = el("title", {}, path);
      title.textContent = run.id + "\n" + data.cells[run.cell].label;
      lines.push({run: run, path: path});
    });
    axes.forEach(function (axis, i) {
      var g = el("g", {"class": "axis", "data-axis": axis, transform: "translate(" + x(i) + ",0)"}, svg);
      el("line", {x1: 0, x2: 0, y1: top, y2: bottom}, g);
      scales[i].ticks.forEach(function (t) {
        el("line", {x1: -4, x2: 0, y1: t[1], y2: t[1]}, g);
        text(g, -7, t[1] + 4, fmt(t[0]), {"text-anchor": "end"});
      });
      var isMetric = data.metrics.indexOf(axis) >= 0;
      text(g, 0, top - 28, axis, {"text-anchor": "middle", "class": "axis-title"});
      text(g, 0, top - 15, isMetric ? "final" : (scales[i].kind === "log" ? "log scale" : ""),
           {"text-anchor": "middle", fill: "#888"});
      var brush = el("rect", {"class": "brush", x: -9, width: 18, y: 0, height: 0, visibility: "hidden"}, g);
      var area = el("rect", {"class": "brush-area", x: -14, width: 28, y: top - 2, height: bottom - top + 4,
                             "data-axis": axis}, g);
      var start = null;
      function localY(event) {
        var box = svg.getBoundingClientRect();
        var scale = height / box.height;
        return Math.max(top, Math.min(bottom, (event.clientY - box.top) * scale));
      }
      area.addEventListener("mousedown", function (event) { start = localY(event); event.preventDefault(); });
      window.addEventListener("mousemove", function (event) {
        if (start === null) return;
        var y = localY(event), lo = Math.min(start, y), hi = Math.max(start, y);
        if (hi - lo < 2) return;
        brushes[axis] = [lo, hi];
        brush.setAttribute("y", lo); brush.setAttribute("height", hi - lo); brush.setAttribute("visibility", "visible");
        applyFilter();
      });
      window.addEventListener("mouseup", function () { start = null; });
      area.addEventListener("dblclick", function () {
        delete brushes[axis]; brush.setAttribute("visibility", "hidden"); applyFilter();
      });
    });
    parallelCoordinates.scales = scales;
  }

  function applyFilter() {
    var shown = 0, liveCells = {};
    lines.forEach(function (line) {
      var keep = data.axes.every(function (axis, i) {
        var range = brushes[axis];
        if (!range) return true;
        var y = parallelCoordinates.scales[i](valueOf(line.run, axis));
        return y !== null && y >= range[0] - 0.5 && y <= range[1] + 0.5;
      });
      line.path.classList.toggle("dim", !keep);
      if (keep) { shown += 1; liveCells[line.run.cell] = true; }
    });
    document.getElementById("pc-count").textContent =
      shown + " of " + lines.length + " runs selected";
    document.querySelectorAll("#curves .cell").forEach(function (node) {
      node.classList.toggle("dim", !liveCells[node.getAttribute("data-cell")]);
    });
  }

  // -- curves -------------------------------------------------------------------------------------
  function marker(parent, kind, x, y, color) {
    var r = 3.2;
    if (kind === "square") return el("rect", {x: x - r, y: y - r, width: 2 * r, height: 2 * r, fill: color}, parent);
    if (kind === "triangle") return el("path", {d: "M" + x + "," + (y - r - 1) + "l" + (r + 1) + "," + (2 * r + 1) + "h" + (-2 * r - 2) + "z", fill: color}, parent);
    if (kind === "diamond") return el("path", {d: "M" + x + "," + (y - r - 1) + "l" + (r + 1) + "," + (r + 1) + "l" + (-r - 1) + "," + (r + 1) + "l" + (-r - 1) + "," + (-r - 1) + "z", fill: color}, parent);
    if (kind === "cross") return el("path", {d: "M" + (x - r) + "," + (y - r) + "l" + 2 * r + "," + 2 * r + "M" + (x + r) + "," + (y - r) + "l" + (-2 * r) + "," + 2 * r, stroke: color, "stroke-width": 1.8}, parent);
    return el("circle", {cx: x, cy: y, r: r, fill: "white", stroke: color, "stroke-width": 1.6}, parent);
  }

  function curvePanel(host, key, title) {
    var cells = data.cells.map(function (c, i) { return [i, c]; }).filter(function (p) { return p[1].curves[key]; });
    if (!cells.length) return;
    var width = 400, height = 270, left = 54, right = width - 12, top = 26, bottom = height - 34;
    var svg = el("svg", {width: width, height: height, "class": "curve-panel", "data-metric": key}, host);
    text(svg, left, 16, title, {"class": "axis-title"});
    var xs = [], ys = [];
    cells.forEach(function (p) {
      var c = p[1].curves[key];
      c.x.forEach(function (v, j) { xs.push(v); ys.push(c.mean[j] - c.std[j]); ys.push(c.mean[j] + c.std[j]); });
    });
    var x0 = Math.min.apply(null, xs), x1 = Math.max.apply(null, xs);
    var y0 = Math.min.apply(null, ys), y1 = Math.max.apply(null, ys);
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { y0 -= 0.5; y1 += 0.5; }
    var pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad;
    var sx = function (v) { return left + (v - x0) / (x1 - x0) * (right - left); };
    var sy = function (v) { return bottom - (v - y0) / (y1 - y0) * (bottom - top); };
    var axis = el("g", {"class": "axis"}, svg);
    el("line", {x1: left, x2: right, y1: bottom, y2: bottom}, axis);
    el("line", {x1: left, x2: left, y1: top, y2: bottom}, axis);
    for (var i = 0; i <= 4; i++) {
      var yv = y0 + (y1 - y0) * i / 4;
      el("line", {x1: left - 4, x2: left, y1: sy(yv), y2: sy(yv)}, axis);
      text(axis, left - 6, sy(yv) + 4, fmt(yv), {"text-anchor": "end"});
    }
    var epochs = xs.filter(function (v, j) { return xs.indexOf(v) === j; }).sort(function (a, b) { return a - b; });
    var every = Math.max(1, Math.ceil(epochs.length / 10));
    epochs.forEach(function (v, j) {
      if (j % every) return;
      el("line", {x1: sx(v), x2: sx(v), y1: bottom, y2: bottom + 4}, axis);
      text(axis, sx(v), bottom + 16, fmt(v), {"text-anchor": "middle"});
    });
    text(svg, (left + right) / 2, height - 4, "epoch", {"text-anchor": "middle", fill: "#666"});
    cells.forEach(function (p) {
      var index = p[0], cell = p[1], c = cell.curves[key];
      var g = el("g", {"class": "cell", "data-cell": index}, svg);
      if (c.std.some(function (s) { return s > 0; })) {
        var upper = c.x.map(function (v, j) { return sx(v).toFixed(1) + "," + sy(c.mean[j] + c.std[j]).toFixed(1); });
        var lower = c.x.map(function (v, j) { return sx(v).toFixed(1) + "," + sy(c.mean[j] - c.std[j]).toFixed(1); }).reverse();
        el("polygon", {"class": "band", fill: cell.color, points: upper.concat(lower).join(" ")}, g);
      }
      var d = c.x.map(function (v, j) { return (j ? "L" : "M") + sx(v).toFixed(1) + "," + sy(c.mean[j]).toFixed(1); }).join("");
      el("path", {"class": "curve", d: d, stroke: cell.color, "stroke-dasharray": cell.dash}, g);
      c.x.forEach(function (v, j) { marker(g, cell.marker, sx(v), sy(c.mean[j]), cell.color); });
    });
    var cursor = el("line", {y1: top, y2: bottom, stroke: "#999", "stroke-dasharray": "3 3", visibility: "hidden"}, svg);
    var tip = el("text", {"class": "tip", x: left + 6, y: top + 10, visibility: "hidden"}, svg);
    svg.addEventListener("mousemove", function (event) {
      var box = svg.getBoundingClientRect();
      var px = event.clientX - box.left;
      var nearest = epochs.reduce(function (best, v) { return Math.abs(sx(v) - px) < Math.abs(sx(best) - px) ? v : best; }, epochs[0]);
      cursor.setAttribute("x1", sx(nearest)); cursor.setAttribute("x2", sx(nearest)); cursor.setAttribute("visibility", "visible");
      while (tip.firstChild) tip.removeChild(tip.firstChild);
      var line = el("tspan", {x: left + 6, dy: 0}, tip);
      line.textContent = "epoch " + fmt(nearest);
      cells.forEach(function (p) {
        if (hiddenCells[p[0]]) return;
        var c = p[1].curves[key], j = c.x.indexOf(nearest);
        if (j < 0) return;
        var row = el("tspan", {x: left + 6, dy: 13, fill: p[1].color}, tip);
        row.textContent = p[1].label + ": " + fmt(c.mean[j]) + (c.n[j] > 1 ? " ± " + fmt(c.std[j]) : "");
      });
      tip.setAttribute("visibility", "visible");
    });
    svg.addEventListener("mouseleave", function () {
      cursor.setAttribute("visibility", "hidden"); tip.setAttribute("visibility", "hidden");
    });
  }

  function legend() {
    var host = document.getElementById("legend");
    data.cells.forEach(function (cell, index) {
      var item = document.createElement("span");
      item.setAttribute("data-cell", index);
      var icon = el("svg", {width: 34, height: 12}, item);
      el("line", {x1: 1, x2: 33, y1: 6, y2: 6, stroke: cell.color, "stroke-width": 2, "stroke-dasharray": cell.dash}, icon);
      marker(icon, cell.marker, 17, 6, cell.color);
      item.appendChild(document.createTextNode(cell.label));
      item.addEventListener("click", function () {
        hiddenCells[index] = !hiddenCells[index];
        item.classList.toggle("off", !!hiddenCells[index]);
        document.querySelectorAll('#curves .cell[data-cell="' + index + '"]').forEach(function (node) {
          node.classList.toggle("hidden", !!hiddenCells[index]);
        });
      });
      host.appendChild(item);
    });
  }

  parallelCoordinates();
  legend();
  var curves = document.getElementById("curves");
  Object.keys(data.curveTitles).forEach(function (key) { curvePanel(curves, key, data.curveTitles[key]); });
  applyFilter();
  window.bnexpReport = {data: data, brushes: brushes, ready: true};
})();
