/* LLM Monitor's dashboard: number formats, charts drawn as SVG, and the overview that reads
 * the views' JSON every few seconds. No library and no network beyond this server.
 * Formats follow llm_monitor/dashboard/formatting.py: keep the two in step. */
(function () {
  'use strict';
  const SVG = 'http://www.w3.org/2000/svg';
  const PALETTE = ['#2563eb', '#ea580c', '#059669', '#9333ea', '#db2777', '#0891b2',
    '#ca8a04', '#64748b'];
  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct',
    'Nov', 'Dec'];

  // Formats.

  function usd(v) {
    if (v === null || v === undefined) return '';
    if (v === 0) return '$0.00';
    const sign = v < 0 ? '-' : '';
    let a = Math.abs(v);
    // Rounded first: 0.000999999 is $0.0010, not $0.00100.
    if (a < 0.01) a = Number(a.toPrecision(2));
    if (a >= 0.01) {
      return sign + '$' + a.toLocaleString('en-US',
        {minimumFractionDigits: 2, maximumFractionDigits: 2});
    }
    const digits = 1 - Math.floor(Math.log10(a));
    return sign + '$' + a.toFixed(digits);
  }
  function count(v) {
    if (v === null || v === undefined) return '';
    return Number.isInteger(v) ? v.toLocaleString('en-US')
      : v.toLocaleString('en-US', {minimumFractionDigits: 1, maximumFractionDigits: 1});
  }
  function pct(v, signed) {
    if (v === null || v === undefined) return '';
    const s = v.toLocaleString('en-US', {minimumFractionDigits: 1, maximumFractionDigits: 1});
    return (signed && v > 0 ? '+' : '') + s + '%';
  }
  function ms(v) {
    if (v === null || v === undefined) return '';
    return Math.abs(v) >= 100 ? Math.round(v).toLocaleString('en-US') + ' ms'
      : v.toFixed(1) + ' ms';
  }
  function kind(column) {
    if (column === 'change_pct') return 'change';
    if (column.includes('cost') || column.endsWith('_usd')) return 'usd';
    if (column.endsWith('_pct')) return 'pct';
    if (column.endsWith('_ms')) return 'ms';
    return 'count';
  }
  function fmt(how, v) {
    switch (how) {
      case 'usd': return usd(v);
      case 'pct': return pct(v, false);
      case 'change': return pct(v, true);
      case 'ms': return ms(v);
      case 'plain': return v === null || v === undefined ? '' : String(v);
      default: return count(v);
    }
  }
  // Axis labels: as many decimals as the step between ticks needs (so that no two ticks
  // read alike), and thousands as k.
  function stepDecimals(step, least) {
    for (let d = least; d < 12; d++) {
      if (Math.abs(Math.round(step * 10 ** d) - step * 10 ** d) < 1e-6) return d;
    }
    return 12;
  }
  function axisFmt(how, v, step) {
    const k = x => (x / 1000).toLocaleString('en-US', {maximumFractionDigits: 1}) + 'k';
    if (how === 'usd') {
      if (Math.abs(v) >= 1000) return '$' + k(v);
      const d = stepDecimals(step || 1, step >= 1 ? 0 : 2);
      return (v < 0 ? '-$' : '$') + Math.abs(v).toLocaleString('en-US',
        {minimumFractionDigits: d, maximumFractionDigits: d});
    }
    if ((how === 'count' || how === 'ms') && Math.abs(v) >= 10000) {
      return k(v) + (how === 'ms' ? ' ms' : '');
    }
    if (how === 'count' || how === 'ms') {
      const d = stepDecimals(step || 1, 0);
      return v.toLocaleString('en-US', {minimumFractionDigits: d, maximumFractionDigits: d}) +
        (how === 'ms' ? ' ms' : '');
    }
    return fmt(how, v);
  }
  function parseTime(s) {
    // '2026-11-23', '2026-11-23T20:00', '2026-11-23T20:15:45.542Z': all UTC.
    let t = s.length === 10 ? s + 'T00:00' : s;
    if (!/Z$/.test(t)) t += 'Z';
    return new Date(t);
  }
  function two(n) { return String(n).padStart(2, '0'); }
  function dayLabel(d) { return MONTHS[d.getUTCMonth()] + ' ' + d.getUTCDate(); }
  function timeLabel(d) { return two(d.getUTCHours()) + ':' + two(d.getUTCMinutes()); }

  // Charts.

  function el(tag, attrs, parent, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }
  function niceStep(range, ticks) {
    const raw = range / Math.max(ticks, 1);
    const mag = Math.pow(10, Math.floor(Math.log10(raw || 1)));
    const norm = raw / mag;
    return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
  }
  // Axis range and round tick values; `tight` keeps the range to the data (bars).
  function niceDomain(lo, hi, ticks, tight) {
    if (lo === hi) { hi = lo + (lo === 0 ? 1 : Math.abs(lo)); }
    const step = niceStep(hi - lo, ticks);
    const start = tight ? lo : Math.floor(lo / step) * step;
    const stop = tight ? hi : Math.ceil(hi / step) * step;
    const values = [];
    for (let v = Math.ceil(start / step) * step; v <= stop + step * 1e-9; v += step) {
      values.push(+v.toPrecision(12));
    }
    return {lo: start, hi: stop, ticks: values, step};
  }
  function truncate(text, chars) {
    text = String(text);
    return text.length > chars ? text.slice(0, Math.max(chars - 1, 1)) + '…' : text;
  }
  function newSvg(box, width, height, label) {
    const svg = el('svg', {width, height, viewBox: `0 0 ${width} ${height}`, role: 'img',
      'aria-label': label, class: 'lm-svg'});
    return svg;
  }

  // `bars`: one horizontal bar per row, ranked by value (largest first).
  function drawBars(box, rows, spec) {
    const how = spec.format || kind(spec.value);
    const width = Math.max(box.clientWidth, 240);
    const valued = rows.filter(r => r[spec.value] !== null && r[spec.value] !== undefined);
    const missing = rows.length - valued.length;
    valued.sort((a, b) => b[spec.value] - a[spec.value]);
    const shown = valued.slice(0, spec.limit || 12);
    if (!shown.length) return empty(box, rows.length ? 'Nothing to chart: no known values.'
      : 'No data in this range.');
    const labelChars = Math.max(8, Math.min(28, Math.floor(width * 0.32 / 7)));
    const left = Math.min(labelChars * 7 + 12, width * 0.4);
    const right = 76;
    const rowH = 28;
    const top = 8;
    const height = top + shown.length * rowH + 26;
    const values = shown.map(r => r[spec.value]);
    const dom = niceDomain(Math.min(0, ...values), Math.max(0, ...values),
      Math.max(2, Math.floor((width - left - right) / 90)), true);
    const x = v => left + (v - dom.lo) / (dom.hi - dom.lo) * (width - left - right);
    const svg = newSvg(box, width, height, `${spec.title || 'Chart'}: ${spec.value} by ${spec.label}`);
    const axisY = top + shown.length * rowH;
    for (const t of dom.ticks) {
      el('line', {x1: x(t), x2: x(t), y1: top, y2: axisY, class: 'lm-grid'}, svg);
      el('text', {x: x(t), y: axisY + 16, 'text-anchor': 'middle', class: 'lm-tick'}, svg,
        axisFmt(how, t, dom.step));
    }
    shown.forEach((r, i) => {
      const v = r[spec.value];
      const y = top + i * rowH;
      const x0 = x(Math.min(0, v));
      const w = Math.max(Math.abs(x(v) - x(0)), 1.5);
      el('text', {x: left - 8, y: y + rowH / 2 + 4, 'text-anchor': 'end', class: 'lm-label'}, svg,
        truncate(r[spec.label] ?? '(none)', labelChars));
      const bar = el('rect', {x: x0, y: y + 5, width: w, height: rowH - 10, rx: 2,
        class: 'lm-mark', fill: v < 0 ? PALETTE[1] : PALETTE[0]}, svg);
      el('title', {}, bar, `${r[spec.label] ?? '(none)'}: ${fmt(how, v)}`);
      // A negative bar's value goes right of zero, clear of the labels on the left.
      el('text', {x: v >= 0 ? x(v) + 6 : x(0) + 6, y: y + rowH / 2 + 4, 'text-anchor': 'start',
        class: 'lm-value'}, svg, fmt(how, v));
    });
    el('line', {x1: x(0), x2: x(0), y1: top, y2: axisY, class: 'lm-axis'}, svg);
    box.replaceChildren(svg);
    const notes = [];
    if (valued.length > shown.length) notes.push(`${valued.length - shown.length} more in the table`);
    if (missing) notes.push(`${missing} without a known value (in the table)`);
    if (notes.length) note(box, notes.join('; ') + '.');
  }

  function fillDays(keys, from, to) {
    if (!from || !to) return keys;
    const out = [];
    for (let d = parseTime(from); d <= parseTime(to); d = new Date(d.getTime() + 86400000)) {
      out.push(d.toISOString().slice(0, 10));
    }
    return out.length <= 1000 ? out : keys;
  }

  // `columns`: one column per time bucket `x`, stacked by `series` when given.
  function drawColumns(box, rows, spec) {
    const how = spec.format || kind(spec.value);
    const width = Math.max(box.clientWidth, 240);
    const height = spec.height || Math.max(220, Math.min(360, Math.round(width * 0.42)));
    let keys = [...new Set(rows.map(r => r[spec.x]))].sort();
    if (spec.fill && keys.every(k => k.length === 10)) keys = fillDays(keys, spec.from || keys[0], spec.to || keys[keys.length - 1]);
    if (!keys.length) return empty(box, 'No data in this range.');
    const totals = {};
    for (const r of rows) {
      const s = spec.series ? r[spec.series] : spec.value;
      totals[s] = (totals[s] || 0) + (r[spec.value] || 0);
    }
    const series = Object.keys(totals).sort((a, b) =>
      (a === '(other)') - (b === '(other)') || totals[b] - totals[a]);
    const stacks = new Map(keys.map(k => [k, {}]));
    for (const r of rows) {
      const s = spec.series ? r[spec.series] : spec.value;
      const slot = stacks.get(r[spec.x]);
      if (slot) slot[s] = (slot[s] || 0) + (r[spec.value] || 0);
    }
    const maxTotal = Math.max(0, ...[...stacks.values()].map(o =>
      Object.values(o).reduce((a, b) => a + b, 0)));
    const left = 64, right = 12, top = 10, bottom = 28;
    const dom = niceDomain(0, maxTotal, Math.max(3, Math.floor((height - top - bottom) / 45)));
    const plotW = width - left - right;
    const y = v => top + (1 - (v - dom.lo) / (dom.hi - dom.lo)) * (height - top - bottom);
    const slotW = plotW / keys.length;
    const barW = Math.max(1, slotW * (keys.length > 60 ? 0.9 : 0.72));
    const svg = newSvg(box, width, height,
      `${spec.title || 'Chart'}: ${spec.value} per ${spec.x}` + (spec.series ? ` by ${spec.series}` : ''));
    for (const t of dom.ticks) {
      el('line', {x1: left, x2: width - right, y1: y(t), y2: y(t), class: 'lm-grid'}, svg);
      el('text', {x: left - 6, y: y(t) + 4, 'text-anchor': 'end', class: 'lm-tick'}, svg,
        axisFmt(how, t, dom.step));
    }
    const hourly = keys[0].length > 10;
    const every = Math.max(1, Math.ceil(keys.length / Math.max(2, Math.floor(plotW / 64))));
    keys.forEach((k, i) => {
      const cx = left + slotW * i + (slotW - barW) / 2;
      let base = 0;
      for (const s of series) {
        const v = stacks.get(k)[s] || 0;
        if (v <= 0) continue;
        const rect = el('rect', {x: cx, y: y(base + v), width: barW,
          height: Math.max(y(base) - y(base + v), 0.5), class: 'lm-mark',
          fill: PALETTE[series.indexOf(s) % PALETTE.length]}, svg);
        const when = hourly ? k.replace('T', ' ') : k;
        el('title', {}, rect, `${when}${spec.series ? ' · ' + s : ''}: ${fmt(how, v)}`);
        base += v;
      }
      if (i % every === 0) {
        const d = parseTime(k);
        const text = hourly && every < 24 ? (d.getUTCHours() === 0 || i === 0 ?
          dayLabel(d) : timeLabel(d)) : dayLabel(d);
        el('text', {x: cx + barW / 2, y: height - 8, 'text-anchor': 'middle', class: 'lm-tick'},
          svg, text);
      }
    });
    el('line', {x1: left, x2: width - right, y1: y(0), y2: y(0), class: 'lm-axis'}, svg);
    box.replaceChildren(svg);
    if (spec.series) legend(box, series.map((s, i) => [s, PALETTE[i % PALETTE.length],
      fmt(how, totals[s])]));
  }

  const STEPS = [60, 300, 900, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 7 * 86400]
    .map(s => s * 1000);

  // `points`: one dot per row, `value` against the time `x`.
  function drawPoints(box, rows, spec) {
    const how = spec.format || kind(spec.value);
    const pts = rows.filter(r => r[spec.value] !== null && r[spec.x])
      .map(r => [parseTime(r[spec.x]).getTime(), r[spec.value], r]);
    if (!pts.length) return empty(box, 'No requests to show.');
    const width = Math.max(box.clientWidth, 240);
    const height = spec.height || Math.max(200, Math.min(320, Math.round(width * 0.36)));
    const left = 64, right = 16, top = 10, bottom = 28;
    let t0 = Math.min(...pts.map(p => p[0])), t1 = Math.max(...pts.map(p => p[0]));
    if (t1 - t0 < 60000) { t0 -= 30000; t1 += 30000; }
    const values = pts.map(p => p[1]);
    const dom = niceDomain(Math.min(0, ...values), Math.max(...values),
      Math.max(3, Math.floor((height - top - bottom) / 45)));
    const x = t => left + (t - t0) / (t1 - t0) * (width - left - right);
    const y = v => top + (1 - (v - dom.lo) / (dom.hi - dom.lo)) * (height - top - bottom);
    const svg = newSvg(box, width, height, `${spec.title || 'Chart'}: ${spec.value} over time`);
    for (const t of dom.ticks) {
      el('line', {x1: left, x2: width - right, y1: y(t), y2: y(t), class: 'lm-grid'}, svg);
      el('text', {x: left - 6, y: y(t) + 4, 'text-anchor': 'end', class: 'lm-tick'}, svg,
        axisFmt(how, t, dom.step));
    }
    const labels = Math.max(2, Math.floor((width - left - right) / 80));
    const step = STEPS.find(s => (t1 - t0) / s <= labels) || STEPS[STEPS.length - 1];
    const span = t1 - t0;
    for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) {
      const d = new Date(t);
      const text = step >= 86400000 || (span > 2 * 86400000) ? dayLabel(d)
        : (d.getUTCHours() === 0 && d.getUTCMinutes() === 0 ? dayLabel(d) : timeLabel(d));
      el('line', {x1: x(t), x2: x(t), y1: top, y2: height - bottom, class: 'lm-grid'}, svg);
      el('text', {x: x(t), y: height - 8, 'text-anchor': 'middle', class: 'lm-tick'}, svg, text);
    }
    for (const [t, v, r] of pts) {
      const dot = el('circle', {cx: x(t), cy: y(v), r: 3.5, class: 'lm-mark',
        fill: r.outcome && r.outcome !== 'ok' ? PALETTE[1] : PALETTE[0]}, svg);
      el('title', {}, dot, `${r[spec.x].replace('T', ' ').replace(/\.\d+Z$|Z$/, '')} UTC` +
        (r.model ? ` · ${r.model}` : '') + `: ${fmt(how, v)}`);
    }
    el('line', {x1: left, x2: width - right, y1: height - bottom, y2: height - bottom,
      class: 'lm-axis'}, svg);
    box.replaceChildren(svg);
  }

  function empty(box, text) {
    const p = document.createElement('p');
    p.className = 'lm-chart-empty';
    p.textContent = text;
    box.replaceChildren(p);
  }
  function note(box, text) {
    const p = document.createElement('p');
    p.className = 'lm-chart-note';
    p.textContent = text;
    box.appendChild(p);
  }
  function legend(box, items) {
    const ul = document.createElement('ul');
    ul.className = 'lm-legend';
    for (const [name, colour, total] of items) {
      const li = document.createElement('li');
      const swatch = document.createElement('span');
      swatch.className = 'lm-swatch';
      swatch.style.background = colour;
      li.append(swatch, `${name} ${total}`);
      ul.appendChild(li);
    }
    box.appendChild(ul);
  }

  function draw(box, rows, spec) {
    const how = {bars: drawBars, columns: drawColumns, points: drawPoints}[spec.type];
    if (!how) return;
    how(box, rows, spec);
    box.dataset.drawnWidth = box.clientWidth;
  }
  // Draw again when the chart's width changes (a rotated phone, a resized window).
  function keepDrawn(box, rows, spec) {
    draw(box, rows, spec);
    if (!window.ResizeObserver) return;
    let timer = null;
    new ResizeObserver(() => {
      if (String(box.clientWidth) === box.dataset.drawnWidth) return;
      clearTimeout(timer);
      timer = setTimeout(() => draw(box, box.lmRows || rows, spec), 100);
    }).observe(box);
  }

  // A view's page: its rows are in the page.
  function viewPage() {
    const box = document.getElementById('lm-chart');
    const data = document.getElementById('lm-rows');
    if (!box || !data) return;
    const spec = JSON.parse(box.dataset.chart);
    keepDrawn(box, JSON.parse(data.textContent), spec);
  }

  // The overview: every number from the views' JSON, read again every few seconds.

  function text(tag, content, className) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (content !== undefined && content !== null) node.textContent = content;
    return node;
  }
  function link(href, content) {
    const a = document.createElement('a');
    a.href = href;
    a.textContent = content;
    return a;
  }

  function overview(root) {
    const base = root.dataset.base;
    const refresh = Number(root.dataset.refresh || 15) * 1000;
    const period = root.querySelector('#lm-period');
    const split = root.querySelector('#lm-split');
    const status = root.querySelector('#lm-updated');
    const seen = new Set();
    let first = true;
    let busy = false;

    async function get(name, params) {
      const query = new URLSearchParams({...params, _shape: 'array'});
      const response = await fetch(`${base}/${name}.json?${query}`,
        {credentials: 'same-origin', headers: {Accept: 'application/json'}});
      if (!response.ok) throw new Error(`${name}: ${response.status}`);
      return response.json();
    }

    function cards(summary) {
      const m = Object.fromEntries(summary.map(r => [r.metric, r]));
      const tokens = part => (m.input_tokens?.[part] || 0) + (m.output_tokens?.[part] || 0);
      const change = (cur, prev) => prev > 0 ? 100 * (cur - prev) / prev : null;
      const periodName = period.options[period.selectedIndex].text.toLowerCase();
      const list = [
        ['requests', 'Requests', count(m.requests?.current ?? 0), m.requests?.change_pct, 'up'],
        ['tokens', 'Tokens', count(tokens('current')),
          change(tokens('current'), tokens('previous')), 'up'],
        ['cost', 'Cost', m.cost_usd?.current === null ? 'unknown' : usd(m.cost_usd?.current ?? 0),
          m.cost_usd?.change_pct, 'up'],
        ['latency', 'Avg latency', m.avg_latency_ms?.current == null ? '—'
          : ms(m.avg_latency_ms.current), m.avg_latency_ms?.change_pct, 'down'],
        ['errors', 'Error rate', m.error_rate_pct?.current == null ? '—'
          : pct(m.error_rate_pct.current), null, 'down',
          m.error_rate_pct?.current != null && m.error_rate_pct?.previous != null
            ? m.error_rate_pct.current - m.error_rate_pct.previous : null],
      ];
      const nodes = list.map(([key, title, value, changePct, good, points]) => {
        const card = text('div', null, 'lm-card');
        card.dataset.card = key;
        card.append(text('h3', title), text('p', value, 'lm-card-value'));
        let delta = 'no earlier data';
        let cls = 'lm-flat';
        if (points !== undefined && points !== null) {
          delta = `${points > 0 ? '+' : ''}${points.toFixed(2)} pts`;
          cls = points === 0 ? 'lm-flat' : (points < 0) === (good === 'down') ? 'lm-good' : 'lm-bad';
        } else if (changePct !== null && changePct !== undefined) {
          delta = pct(changePct, true);
          cls = changePct === 0 || ['requests', 'tokens', 'cost'].includes(key) ? 'lm-flat'
            : (changePct < 0) === (good === 'down') ? 'lm-good' : 'lm-bad';
        }
        const arrow = delta.startsWith('+') ? '▲ ' : delta.startsWith('-') ? '▼ ' : '';
        card.append(text('p', `${arrow}${delta} vs the ${periodName.replace('last', 'previous')}`,
          `lm-card-change ${cls}`));
        return card;
      });
      root.querySelector('#lm-cards').replaceChildren(...nodes);
    }

    function month(rows) {
      const f = Object.fromEntries(rows.map(r => [r.figure, r]));
      const cells = [
        ['month to date', 'Month to date', f['month to date']],
        ['projected month', 'Projected by month end', f['projected month']],
        ['last month', 'Last month', f['last month']],
      ].map(([key, title, r]) => {
        const box = text('div', null, 'lm-money');
        box.dataset.figure = key;
        const value = !r ? '—' : r.cost_usd === null ? 'unknown' : usd(r.cost_usd);
        box.append(text('h3', title), text('p', value, 'lm-money-value'));
        let detail = r ? r.month : '';
        if (key === 'projected month' && r) {
          detail = `${usd(r.daily_rate_usd)} a day (the last 7 days) to the month's end`;
        } else if (r && r.unpriced) {
          detail += ` · ${count(r.unpriced)} unpriced requests left out`;
        }
        box.append(text('p', detail, 'lm-money-detail'));
        return box;
      });
      root.querySelector('#lm-month').replaceChildren(...cells);
    }

    function top(selector, rows, labelKey, hrefOf) {
      const list = document.createElement('ol');
      list.className = 'lm-top';
      const max = Math.max(...rows.map(r => r.cost_usd || 0), 0);
      for (const r of rows.slice(0, 5)) {
        const li = document.createElement('li');
        const name = hrefOf ? link(hrefOf(r), r[labelKey]) : text('span', r[labelKey]);
        name.classList.add('lm-top-name');
        const bar = text('span', null, 'lm-top-bar');
        bar.style.setProperty('--share', max ? `${100 * (r.cost_usd || 0) / max}%` : '0%');
        li.append(name, text('span', r.cost_usd === null ? 'unknown' : usd(r.cost_usd),
          'lm-top-value'), bar);
        list.appendChild(li);
      }
      if (!rows.length) list.appendChild(text('li', 'No requests in the last 30 days.'));
      root.querySelector(selector).replaceChildren(list);
    }

    function unpriced(rows) {
      const target = root.querySelector('#lm-unpriced');
      if (!rows.length) {
        target.replaceChildren(text('p', 'Every request of the last 30 days has a known cost.',
          'lm-ok'));
        return;
      }
      const list = document.createElement('ul');
      list.className = 'lm-unpriced';
      for (const r of rows.slice(0, 6)) {
        const li = document.createElement('li');
        li.append(link(`${base}/recent_requests?model=${encodeURIComponent(r.model)}`, r.model),
          text('span', ` (${r.provider}): ${count(r.unpriced_requests)} requests, ${r.reason}`));
        list.appendChild(li);
      }
      target.replaceChildren(list);
    }

    function recent(rows) {
      const body = document.createElement('tbody');
      for (const r of rows.slice(0, 10)) {
        const tr = document.createElement('tr');
        if (!first && !seen.has(r.id)) tr.className = 'lm-new';
        seen.add(r.id);
        const time = r.ts.replace('T', ' ').replace(/\.\d+Z$|Z$/, '');
        const cells = [
          ['Time (UTC)', link(`${base}/request?id=${r.id}`, time.slice(5)), ''],
          ['Model', r.model || r.path, ''],
          ['Status', String(r.status ?? r.outcome), ''],
          ['Tokens', count((r.input_tokens || 0) + (r.output_tokens || 0)), 'num'],
          ['Cost', r.cost_usd === null ? (r.priced === 0 ? 'unknown' : '—') : usd(r.cost_usd), 'num'],
          ['Latency', ms(r.latency_ms), 'num'],
        ];
        for (const [label, value, cls] of cells) {
          const td = document.createElement('td');
          td.dataset.label = label;
          if (cls) td.className = cls;
          td.append(value);
          tr.appendChild(td);
        }
        body.appendChild(tr);
      }
      if (!rows.length) {
        const tr = document.createElement('tr');
        const td = text('td', 'No requests yet.');
        td.colSpan = 6;
        tr.appendChild(td);
        body.appendChild(tr);
      }
      root.querySelector('#lm-recent tbody').replaceWith(body);
    }

    async function load() {
      if (busy) return;
      busy = true;
      const today = new Date().toISOString().slice(0, 10);
      const from = new Date(Date.now() - 29 * 86400000).toISOString().slice(0, 10);
      try {
        const [summary, spend, series, families, tokens, users, missing, latest] =
          await Promise.all([
            get('summary', {period: period.value}),
            get('month_spend', {}),
            get('cost_series', {from, to: today, by: split.value}),
            get('by_family', {}),
            get('by_token', {}),
            get('by_user', {}),
            get('unpriced', {}),
            get('recent_requests', {}),
          ]);
        cards(summary);
        month(spend);
        const box = root.querySelector('#lm-chart');
        box.lmRows = series;
        const spec = {type: 'columns', x: 'day', series: 'series', value: 'cost_usd', fill: true,
          from, to: today, title: 'Cost per day'};
        if (!box.dataset.observed) {
          box.dataset.observed = '1';
          keepDrawn(box, series, spec);
        } else {
          draw(box, series, spec);
        }
        top('#lm-top-models', families, 'family',
          r => `${base}/family_models?family=${encodeURIComponent(r.family)}`);
        top('#lm-top-tokens', tokens, 'token');
        top('#lm-top-users', users, 'user');
        unpriced(missing);
        recent(latest);
        first = false;
        status.textContent = `Updated ${new Date().toISOString().slice(11, 19)} UTC; ` +
          `refreshes every ${refresh / 1000} s.`;
        root.dataset.loaded = String(Number(root.dataset.loaded || 0) + 1);
      } catch (e) {
        status.textContent = `Could not refresh (${e.message}); trying again in ${refresh / 1000} s.`;
      } finally {
        busy = false;
      }
    }
    period.addEventListener('change', load);
    split.addEventListener('change', load);
    load();
    setInterval(() => { if (!document.hidden) load(); }, refresh);
  }

  window.LLMMonitor = {usd, count, pct, ms, fmt, draw};
  document.addEventListener('DOMContentLoaded', () => {
    viewPage();
    const root = document.getElementById('lm-overview');
    if (root) overview(root);
  });
})();
