// A cell page of kdbench's site (kdbench/reporting/site_cells.py): draws the runs' learning curves from
// the Vega-Lite spec in #kdbench-curves.
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("kdbench-curves").textContent);
  const spec = window.vegaLite.compile(data.spec).spec;
  const view = new window.vega.View(window.vega.parse(spec, null, { ast: true }), {
    expr: window.vega.expressionInterpreter, renderer: "svg", container: "#curves", hover: true,
  });
  window.kdbenchChart = { view, updated: view.runAsync() };
})();
