// convis-db explorer: a small single-page app over the JSON API (no build step, no dependencies).
// Views, chosen by the URL hash:
//   #/                              gallery of stored images
//   #/image/ID/entity.n.01/.../X    image ID at concept X (the trail is the breadcrumb path)
//   #/concept/X                     images with concept X, ranked by score
(() => {
  'use strict';

  const ROOT = document.body.dataset.root || 'entity.n.01';
  const PAGE = 48;
  const state = {
    style: localStorage.getItem('convis.style') === 'heatmap' ? 'heatmap' : 'mask',
    threshold: Math.min(0.95, Math.max(0, parseFloat(localStorage.getItem('convis.threshold')) || 0)),
    generation: 0,
  };

  // ---- helpers ------------------------------------------------------------------------------
  const $ = (sel, root = document) => root.querySelector(sel);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  class ApiError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  async function api(path) {
    const response = await fetch(path, { headers: { Accept: 'application/json' } });
    let body = null;
    try { body = await response.json(); } catch (_) { /* not JSON */ }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `${response.status} ${response.statusText}`;
      throw new ApiError(message, response.status);
    }
    return body;
  }

  const enc = encodeURIComponent;
  const fmt = (x) => (typeof x === 'number' ? x.toFixed(4) : '');
  // Image-level scores are missing (null) for images ingested before convis-db stored them.
  const fmtLevel = (x) => (typeof x === 'number' ? x.toFixed(4) : 'not stored (ingest --backfill-image-level)');
  const imageHash = (id, trail) => `#/image/${id}` + (trail && trail.length ? '/' + trail.map(enc).join('/') : '');
  const conceptHash = (synset) => `#/concept/${enc(synset)}`;

  function mapUrl(imageId, synset, size) {
    return `/api/map/${imageId}/${enc(synset)}.png?style=${state.style}` +
      `&threshold=${state.threshold.toFixed(2)}&size=${size}`;
  }

  function mapImg(imageId, synset, size, cls, alt) {
    return el('img', {
      class: `map ${cls || ''}`.trim(), src: mapUrl(imageId, synset, size), alt: alt || `${synset} map`,
      loading: 'lazy', decoding: 'async', dataset: { image: imageId, synset, size },
    });
  }

  function refreshMaps() {
    document.querySelectorAll('img.map').forEach((img) => {
      img.src = mapUrl(img.dataset.image, img.dataset.synset, img.dataset.size);
    });
  }

  function showError(message) {
    const box = $('#error');
    if (!message) { box.hidden = true; box.textContent = ''; return; }
    box.textContent = message;
    box.hidden = false;
  }

  function scoreBar(score) {
    const pct = Math.max(0, Math.min(1, score || 0)) * 100;
    return el('div', { class: 'scorebar', title: `score ${fmt(score)}` },
      el('div', { class: 'scorebar-fill', style: `width:${pct.toFixed(1)}%` }));
  }

  function setView(...children) {
    const view = $('#view');
    view.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
    window.scrollTo(0, 0);
  }

  function loading(text) { return el('p', { class: 'loading', text: text || 'Loading…' }); }

  // ---- views --------------------------------------------------------------------------------
  async function galleryView(gen) {
    setView(loading('Loading images…'));
    const grid = el('div', { class: 'grid gallery', id: 'gallery' });
    const more = el('button', { type: 'button', class: 'more', hidden: true, text: 'Show more images' });
    let offset = 0;
    let total = 0;
    async function page() {
      const data = await api(`/api/images?offset=${offset}&limit=${PAGE}`);
      if (gen !== state.generation) return;
      total = data.total;
      for (const im of data.images) {
        grid.append(el('a', { class: 'card image-card', href: imageHash(im.image_id), title: im.path },
          el('div', { class: 'thumbwrap' },
            el('img', { class: 'thumb', src: `/api/images/${im.image_id}/thumb.jpg?size=320`, alt: im.name,
              loading: 'lazy', decoding: 'async' })),
          el('div', { class: 'card-body' },
            el('div', { class: 'name', text: im.name }),
            el('div', { class: 'meta', text: `#${im.image_id} · ${im.width}×${im.height}` }),
            im.top_concept ? el('div', { class: 'meta top', text: `best match: ${im.top_concept.synset}` }) : null)));
      }
      offset += data.images.length;
      more.hidden = offset >= total;
      heading.textContent = `Images (${total})`;
    }
    const heading = el('h1', { text: 'Images' });
    more.addEventListener('click', () => page().catch((e) => showError(e.message)));
    await page();
    if (gen !== state.generation) return;
    const intro = el('p', { class: 'intro' },
      'Open an image to walk its concept tree from ', el('code', { text: ROOT }),
      ' down: each child concept is ranked by the image\'s score for it, with its saliency map. ' +
      'Or search a concept above to rank every image by it.');
    setView(heading, intro, total ? grid : el('p', { class: 'empty', text:
      'The database holds no images yet. Add some with: convis-db ingest PATH' }), more);
  }

  async function imageView(gen, imageId, trail) {
    setView(loading('Loading the concept tree…'));
    const synset = trail.length ? trail[trail.length - 1] : ROOT;
    const [info, data] = await Promise.all([
      api(`/api/images/${imageId}`),
      api(`/api/images/${imageId}/children?synset=${enc(synset)}&trail=${trail.map(enc).join(',')}`),
    ]);
    if (gen !== state.generation) return;
    const path = data.breadcrumbs.map((b) => b.synset);
    if (path.join('/') !== trail.join('/')) {
      history.replaceState(null, '', imageHash(imageId, path));  // canonical trail, no new history entry
    }
    const node = data.node;

    const crumbs = el('nav', { class: 'breadcrumbs', id: 'breadcrumbs', 'aria-label': 'Concept path' },
      el('a', { href: '#/', class: 'crumb home', text: 'Images' }), el('span', { class: 'sep', text: '/' }),
      el('a', { href: imageHash(imageId), class: 'crumb image', text: info.name }),
      ...data.breadcrumbs.map((b, i) => {
        const last = i === data.breadcrumbs.length - 1;
        return [el('span', { class: 'sep', text: '›' }),
          last ? el('span', { class: 'crumb current', 'aria-current': 'page', text: b.synset })
            : el('a', { class: 'crumb', href: imageHash(imageId, path.slice(0, i + 1)), text: b.synset,
              title: `score ${fmt(b.score)}` })];
      }));

    const fileNote = info.file_status === 'ok' ? null : el('p', { class: 'warn', text: info.file_status === 'missing'
      ? `The image file is gone from ${info.path}: maps are drawn on grey.`
      : `The file at ${info.path} changed since it was ingested: maps are drawn on grey.` });

    const main = el('div', { class: 'node-layout' },
      el('figure', { class: 'main-figure' },
        mapImg(imageId, node.synset, 640, 'main', `${node.synset} on ${info.name}`),
        el('figcaption', {}, `${node.synset} on ${info.name} (${info.width}×${info.height})`)),
      el('div', { class: 'node-info' },
        el('h1', { id: 'node-title', text: node.synset }),
        node.lemmas && node.lemmas.length ? el('p', { class: 'lemmas', text: node.lemmas.join(', ').replaceAll('_', ' ') }) : null,
        el('p', { class: 'definition', text: node.definition }),
        el('dl', { class: 'facts' },
          el('dt', { text: 'map score', title: 'peak of the saliency map (the concept or any descendant)' }),
          el('dd', { id: 'map-score' }, fmt(node.score), scoreBar(node.score)),
          el('dt', { text: 'image score', title: "the paper's image-level max_rank_sim of the whole image" }),
          el('dd', { id: 'image-score' }, fmtLevel(node.image_score),
            typeof node.image_score === 'number' ? scoreBar(node.image_score) : null),
          el('dt', { text: 'own score' }),
          el('dd', { text: `map ${fmt(node.self_score)} · image ${fmtLevel(node.image_self_score)}` }),
          el('dt', { text: 'peak' }), el('dd', { text: `(${node.peak_x}, ${node.peak_y}) px` }),
          el('dt', { text: 'children' }), el('dd', { text: String(data.n_children) })),
        el('p', { class: 'links' },
          el('a', { href: conceptHash(node.synset), class: 'button', id: 'images-with',
            text: `All images with ${node.synset} →` })),
        fileNote,
        el('details', { class: 'original' },
          el('summary', { text: 'Original image' }),
          el('img', { class: 'thumb', src: `/api/images/${imageId}/thumb.jpg?size=480`, alt: info.name, loading: 'lazy' }),
          el('p', { class: 'meta', text: `${info.path} · model ${info.model}` }))));

    let childrenBlock;
    if (data.children.length) {
      const grid = el('div', { class: 'grid children', id: 'children' });
      for (const c of data.children) {
        const leaf = c.n_children === 0;
        grid.append(el('a', {
          class: `card child-card ${leaf ? 'leaf' : 'has-children'}`, href: imageHash(imageId, [...path, c.synset]),
          title: c.definition, dataset: { synset: c.synset },
        },
        el('div', { class: 'thumbwrap' }, mapImg(imageId, c.synset, 320, 'child', `${c.synset} map`),
          el('span', { class: 'rank', text: `#${c.rank}` })),
        el('div', { class: 'card-body' },
          el('div', { class: 'name', text: c.synset }),
          el('div', { class: 'score-line' }, scoreBar(c.score), el('span', { class: 'score', text: fmt(c.score) })),
          typeof c.image_score === 'number'
            ? el('div', { class: 'meta image-score', text: `image ${fmt(c.image_score)}` }) : null,
          el('div', { class: 'def', text: c.definition }),
          el('div', { class: 'meta', text: leaf ? 'leaf' : `${c.n_children} ${c.n_children === 1 ? 'child' : 'children'} ›` }))));
      }
      childrenBlock = [el('h2', { text: `Children of ${node.synset}, ranked by map score (${data.n_children})` }), grid];
    } else {
      childrenBlock = [el('p', { class: 'empty', text: `${node.synset} is a leaf of the hierarchy: it has no children.` })];
    }
    setView(crumbs, main, ...childrenBlock);
  }

  async function conceptView(gen, synset) {
    setView(loading(`Ranking images by ${synset}…`));
    const [concept, first] = await Promise.all([
      api(`/api/concepts/${enc(synset)}`),
      api(`/api/search?synset=${enc(synset)}&limit=${PAGE}`),
    ]);
    if (gen !== state.generation) return;
    const crumbs = el('nav', { class: 'breadcrumbs', id: 'breadcrumbs', 'aria-label': 'Concept path' },
      el('a', { href: '#/', class: 'crumb home', text: 'Images' }),
      ...concept.path.map((s, i) => {
        const last = i === concept.path.length - 1;
        return [el('span', { class: 'sep', text: i ? '›' : '/' }),
          last ? el('span', { class: 'crumb current', 'aria-current': 'page', text: s })
            : el('a', { class: 'crumb', href: conceptHash(s), text: s })];
      }));
    const chips = concept.children.length ? el('div', { class: 'chips' },
      el('span', { class: 'chips-label', text: 'Narrower:' }),
      concept.children.map((c) => el('a', { class: 'chip', href: conceptHash(c.synset), title: c.definition, text: c.synset })))
      : null;
    const grid = el('div', { class: 'grid results', id: 'results' });
    const more = el('button', { type: 'button', class: 'more', text: 'Show more images' });
    let offset = 0;
    function add(data) {
      for (const r of data.results) {
        grid.append(el('a', { class: 'card result-card', href: imageHash(r.image_id, [synset]), title: r.path,
          dataset: { image: r.image_id } },
        el('div', { class: 'thumbwrap' }, mapImg(r.image_id, synset, 320, 'result', `${synset} on ${r.name}`),
          el('span', { class: 'rank', text: `#${r.rank}` })),
        el('div', { class: 'card-body' },
          el('div', { class: 'name', text: r.name }),
          el('div', { class: 'score-line' }, scoreBar(r.score), el('span', { class: 'score', text: fmt(r.score) })),
          el('div', { class: 'meta scores', text: `image ${fmtLevel(r.image_score)} · map ${fmt(r.map_score)}` }),
          el('div', { class: 'meta', text: `peak (${r.peak_x}, ${r.peak_y}) · ${r.width}×${r.height}` }))));
      }
      offset += data.results.length;
      more.hidden = offset >= data.total;
    }
    more.addEventListener('click', async () => {
      try { add(await api(`/api/search?synset=${enc(synset)}&limit=${PAGE}&offset=${offset}`)); }
      catch (e) { showError(e.message); }
    });
    add(first);
    setView(crumbs,
      el('h1', { id: 'concept-title' }, 'Images with ', el('span', { class: 'synset', text: concept.synset }),
        el('span', { class: 'count', text: ` (${first.total})` })),
      concept.lemmas.length ? el('p', { class: 'lemmas', text: concept.lemmas.join(', ').replaceAll('_', ' ') }) : null,
      el('p', { class: 'definition', text: concept.definition }),
      el('p', { class: 'meta', text: `depth ${concept.depth} · ${concept.n_descendants} descendants · ${concept.lexname}` +
        (first.by === 'image'
          ? " · ranked by the image-level score (the paper's max_rank_sim of the whole image; ties by map score)"
          : ' · ranked by the peak of its map (the concept or any descendant)') }),
      ...(first.notes || []).map((n) => el('p', { class: 'warn', text: n })),
      chips,
      first.total ? grid : el('p', { class: 'empty', text: 'No image has a score for this concept.' }),
      more);
  }

  // ---- router -------------------------------------------------------------------------------
  async function route() {
    const gen = ++state.generation;
    showError(null);
    closeSuggestions();
    const parts = location.hash.replace(/^#\/?/, '').split('/').filter(Boolean).map((p) => {
      try { return decodeURIComponent(p); } catch (_) { return p; }
    });
    try {
      if (parts[0] === 'image' && /^\d+$/.test(parts[1] || '')) await imageView(gen, parseInt(parts[1], 10), parts.slice(2));
      else if (parts[0] === 'concept' && parts[1]) await conceptView(gen, parts[1]);
      else await galleryView(gen);
    } catch (e) {
      if (gen !== state.generation) return;
      setView(el('p', { class: 'empty' }, el('a', { href: '#/', text: '← back to the images' })));
      showError(e.message);
    }
  }

  // ---- concept search with suggestions ------------------------------------------------------
  const input = $('#search-input');
  const list = $('#suggestions');
  let suggestions = [];
  let active = -1;
  let timer = null;
  let asked = 0;

  function closeSuggestions() {
    list.hidden = true;
    list.replaceChildren();
    input.setAttribute('aria-expanded', 'false');
    suggestions = [];
    active = -1;
  }

  function choose(synset) {
    closeSuggestions();
    input.value = synset;
    input.blur();
    location.hash = conceptHash(synset);
  }

  function highlight(i) {
    active = i;
    [...list.children].forEach((li, j) => li.setAttribute('aria-selected', j === i ? 'true' : 'false'));
  }

  async function suggest() {
    const q = input.value.trim();
    const ticket = ++asked;
    if (!q) { closeSuggestions(); return; }
    let data;
    try { data = await api(`/api/concepts?q=${enc(q)}&limit=10`); } catch (e) { showError(e.message); return; }
    if (ticket !== asked) return;
    suggestions = data.concepts;
    list.replaceChildren(...(suggestions.length ? suggestions.map((c, i) => el('li', {
      role: 'option', id: `suggestion-${i}`, dataset: { synset: c.synset },
      onmousedown: (ev) => { ev.preventDefault(); choose(c.synset); },
      onmousemove: () => highlight(i),
    }, el('span', { class: 's-name', text: c.synset }),
    el('span', { class: 's-lemmas', text: c.lemmas.join(', ').replaceAll('_', ' ') }),
    el('span', { class: 's-def', text: c.definition }))) : [el('li', { class: 'none', text: `No concept matches “${q}”.` })]));
    list.hidden = false;
    input.setAttribute('aria-expanded', 'true');
    active = -1;
  }

  input.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(suggest, 120); });
  input.addEventListener('keydown', (ev) => {
    if (ev.key === 'ArrowDown' && suggestions.length) { ev.preventDefault(); highlight((active + 1) % suggestions.length); }
    else if (ev.key === 'ArrowUp' && suggestions.length) { ev.preventDefault(); highlight((active - 1 + suggestions.length) % suggestions.length); }
    else if (ev.key === 'Escape') closeSuggestions();
    else if (ev.key === 'Enter') {
      ev.preventDefault();
      if (suggestions.length) choose(suggestions[Math.max(active, 0)].synset);
      else if (input.value.trim()) {
        clearTimeout(timer);
        suggest().then(() => { if (suggestions.length) choose(suggestions[0].synset); });
      }
    }
  });
  input.addEventListener('blur', () => setTimeout(closeSuggestions, 150));

  // ---- style toggle and threshold slider -----------------------------------------------------
  const slider = $('#threshold');
  const sliderValue = $('#threshold-value');

  function syncControls() {
    document.querySelectorAll('.toggle button').forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.style === state.style)));
    slider.value = String(state.threshold);
    sliderValue.textContent = state.threshold.toFixed(2);
  }

  document.querySelectorAll('.toggle button').forEach((b) => b.addEventListener('click', () => {
    if (state.style === b.dataset.style) return;
    state.style = b.dataset.style;
    localStorage.setItem('convis.style', state.style);
    syncControls();
    refreshMaps();
  }));

  let sliderTimer = null;
  slider.addEventListener('input', () => {
    state.threshold = parseFloat(slider.value) || 0;
    sliderValue.textContent = state.threshold.toFixed(2);
    localStorage.setItem('convis.threshold', String(state.threshold));
    clearTimeout(sliderTimer);
    sliderTimer = setTimeout(refreshMaps, 150);
  });

  // ---- start --------------------------------------------------------------------------------
  async function loadStats() {
    try {
      const s = await api('/api/stats');
      $('#db-info').textContent = `${s.db} · ${s.images || 0} images · ${s.synsets} concepts · ${s.model || 'no model'}`;
      if (s.random_weights) {
        const banner = $('#banner');
        banner.textContent = 'This database was built with random (untrained) CLIP weights: its scores and maps are meaningless.';
        banner.hidden = false;
      }
    } catch (e) { showError(e.message); }
  }

  syncControls();
  window.addEventListener('hashchange', route);
  loadStats();
  route();
})();
