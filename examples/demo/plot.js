// A self-contained SVG of the demo's run: the loss of the MoE model and of the
// dense baseline (log scale), and each expert's share of the tokens over time.

const COLORS = [
  "#4e79a7",
  "#f28e2b",
  "#e15759",
  "#76b7b2",
  "#59a14f",
  "#edc948",
  "#b07aa1",
  "#ff9da7",
  "#9c755f",
  "#bab0ac",
];

function esc(s) {
  return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;");
}

function path(points) {
  return points.map(([x, y], i) => `${i ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join("");
}

/**
 * history: { steps: number[], moe: number[], dense: number[], load: number[][] (per step, per expert share) }
 */
function renderSvg(history, title) {
  const W = 900,
    H = 620,
    left = 70,
    right = 160,
    plotW = W - left - right;
  const top1 = 50,
    h1 = 250,
    top2 = 360,
    h2 = 220;
  const n = history.steps.length;
  const xs = (i) => left + (n > 1 ? (i / (n - 1)) * plotW : 0);
  const all = [...history.moe, ...history.dense].filter((v) => v > 0);
  const lo = Math.log10(Math.min(...all)),
    hi = Math.log10(Math.max(...all));
  const ys = (v) => top1 + h1 - ((Math.log10(v) - lo) / (hi - lo || 1)) * h1;
  const out = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="12">`,
  );
  out.push(`<rect width="${W}" height="${H}" fill="white"/>`);
  out.push(`<text x="${left}" y="24" font-size="16" font-weight="bold">${esc(title)}</text>`);
  // Loss panel.
  out.push(`<text x="${left}" y="${top1 - 8}">training loss (MSE, log scale)</text>`);
  out.push(`<rect x="${left}" y="${top1}" width="${plotW}" height="${h1}" fill="none" stroke="#999"/>`);
  for (let d = Math.ceil(lo); d <= Math.floor(hi); d++) {
    const y = ys(10 ** d);
    out.push(
      `<line x1="${left}" x2="${left + plotW}" y1="${y}" y2="${y}" stroke="#eee"/><text x="${left - 8}" y="${y + 4}" text-anchor="end">1e${d}</text>`,
    );
  }
  out.push(
    `<path d="${path(history.dense.map((v, i) => [xs(i), ys(v)]))}" fill="none" stroke="#888" stroke-width="2"/>`,
  );
  out.push(
    `<path d="${path(history.moe.map((v, i) => [xs(i), ys(v)]))}" fill="none" stroke="#e15759" stroke-width="2"/>`,
  );
  out.push(
    `<text x="${left + plotW + 10}" y="${top1 + 20}" fill="#e15759">MoE (top-2 of ${history.load[0].length})</text>`,
  );
  out.push(
    `<text x="${left + plotW + 10}" y="${top1 + 40}" fill="#888">dense, same active</text><text x="${left + plotW + 10}" y="${top1 + 54}" fill="#888">compute</text>`,
  );
  // Load panel: stacked shares.
  const E = history.load[0].length;
  out.push(`<text x="${left}" y="${top2 - 8}">share of routed tokens per expert</text>`);
  const acc = new Array(n).fill(0);
  for (let e = 0; e < E; e++) {
    const lower = acc.slice();
    for (let i = 0; i < n; i++) acc[i] += history.load[i][e];
    const yOf = (v) => top2 + h2 - v * h2;
    const upper = acc.map((v, i) => [xs(i), yOf(v)]);
    const back = lower.map((v, i) => [xs(i), yOf(v)]).reverse();
    out.push(`<path d="${path([...upper, ...back])}Z" fill="${COLORS[e % COLORS.length]}" opacity="0.85"/>`);
    out.push(
      `<rect x="${left + plotW + 10}" y="${top2 + e * 18}" width="12" height="12" fill="${COLORS[e % COLORS.length]}"/><text x="${left + plotW + 28}" y="${top2 + e * 18 + 10}">expert ${e}</text>`,
    );
  }
  out.push(`<rect x="${left}" y="${top2}" width="${plotW}" height="${h2}" fill="none" stroke="#999"/>`);
  out.push(
    `<line x1="${left}" x2="${left + plotW}" y1="${top2 + h2 / 2}" y2="${top2 + h2 / 2}" stroke="white" stroke-dasharray="4 4"/>`,
  );
  out.push(
    `<text x="${left + plotW / 2}" y="${top2 + h2 + 30}" text-anchor="middle">training step (last ${history.steps[n - 1]})</text>`,
  );
  out.push(`</svg>`);
  return out.join("\n");
}

module.exports = { renderSvg };
