// kdbench's board page (kdbench/reporting/html.py): sorts and filters the table, and keeps the Vega-Lite
// charts drawn from the rows the filters leave. The page's data is the JSON in #kdbench-data.
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("kdbench-data").textContent);
  const table = document.querySelector("table.kdbench-leaderboard");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.forEach((row, index) => { row.dataset.index = index; });
  const headers = Array.from(table.tHead.rows[0].cells);
  const selects = Array.from(document.querySelectorAll("#filters select"));
  const search = document.getElementById("filter-text");
  const shown = document.getElementById("shown");
  const chart = document.getElementById("chart");
  let sorted = { column: -1, ascending: true };

  const empty = (value) => value === null || value === "";
  const key = (row, column) => data.rows[row.dataset.index].values[column];
  function compare(a, b, column, ascending) {
    const x = key(a, column), y = key(b, column);
    if (empty(x) || empty(y)) return empty(x) - empty(y);  // empty cells last, either way
    const order = data.columns[column].numeric
      ? x - y
      : String(x).localeCompare(String(y), undefined, { numeric: true });
    return ascending ? order : -order;
  }
  // A first click sorts best first: higher accuracy, lower cost (each column's "first" order).
  function sortBy(column) {
    const ascending = sorted.column === column
      ? !sorted.ascending
      : data.columns[column].first === "ascending";
    sorted = { column, ascending };
    const order = rows.slice().sort((a, b) => compare(a, b, column, ascending) || a.dataset.index - b.dataset.index);
    body.append(...order);
    headers.forEach((th, index) => {
      if (index === column) th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    });
  }
  headers.forEach((th, column) => {
    th.tabIndex = 0;
    th.title = data.columns[column].first === "descending" ? "sort, highest first" : "sort";
    th.addEventListener("click", () => sortBy(column));
    th.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(column); }
    });
  });

  let view = null;
  if (chart && window.vega && window.vegaLite) {
    const spec = window.vegaLite.compile(data.chart).spec;
    // the expression interpreter: no code generated from strings, as the page's policy requires
    view = new window.vega.View(window.vega.parse(spec, null, { ast: true }), {
      expr: window.vega.expressionInterpreter, renderer: "svg", container: chart, hover: true,
    });
  }
  window.kdbenchChart = { view, updated: Promise.resolve() };

  function matches(fields) {
    const text = search ? search.value.trim().toLowerCase() : "";
    return selects.every((select) => select.value === "" || fields[select.dataset.field] === select.value)
      && (text === "" || fields.text.includes(text));
  }
  function filter() {
    const visible = [];
    rows.forEach((row) => {
      const fields = data.rows[row.dataset.index];
      row.hidden = !matches(fields);
      if (!row.hidden) visible.push(fields.chart);
    });
    shown.textContent = visible.length + " of " + rows.length + " rows";
    if (view) {
      const points = visible.filter((point) => point !== null).map((point) => Object.assign({}, point));
      view.change("rows", window.vega.changeset().remove(() => true).insert(points));
      window.kdbenchChart.updated = view.runAsync();
    }
  }
  document.getElementById("filters").addEventListener("submit", (event) => event.preventDefault());
  selects.forEach((select) => select.addEventListener("change", filter));
  if (search) search.addEventListener("input", filter);
  filter();
})();
