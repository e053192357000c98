// A cell page of kdbench's site (kdbench/reporting/site_cells.py): draws each Vega-Lite spec held in a
// <script type="application/json" data-chart="ID"> into the element of that id (the learning curves, the
// per-class evaluation).
(() => {
  "use strict";
  const views = Array.from(document.querySelectorAll("script[data-chart]"), (script) => {
    const spec = window.vegaLite.compile(JSON.parse(script.textContent)).spec;
    // the expression interpreter: no code generated from strings, as the page's policy requires
    return new window.vega.View(window.vega.parse(spec, null, { ast: true }), {
      expr: window.vega.expressionInterpreter, renderer: "svg",
      container: document.getElementById(script.dataset.chart), hover: true,
    });
  });
  window.kdbenchChart = { views, updated: Promise.all(views.map((view) => view.runAsync())) };
})();
