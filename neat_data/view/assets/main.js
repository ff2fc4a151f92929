// Boot: decode the index, draw the header, overview and list (first render), then decode the texts.

function renderHeader(D) {
  document.getElementById('run-name').textContent = `neat-data view · ${D.run.name}`;
  document.getElementById('run-kind').textContent = `${D.run.kind === 'rounds' ? 'neat-data run folder' : 'run folder'} ${D.run.path} · built ${D.run.built} · neat-data ${D.run.version}`;
  const info = clear(document.getElementById('run-info'));
  for (const [label, value] of D.run.info) info.append(el('div', {}, el('dt', { text: label }), el('dd', { text: value })));
  const whole = D.totals.reduce((sum, part) => sum + Object.values(part.responses).reduce((s, byState) => s + Object.values(byState).reduce((a, b) => a + b, 0), 0), 0);
  info.append(el('div', {}, el('dt', { text: 'responses' }), el('dd', { text: whole.toLocaleString('en') })));
  if (D.sample) {
    const note = document.getElementById('sample-note');
    note.hidden = false;
    note.textContent = `This page holds a sample: ${D.sample.prompts.toLocaleString('en')} of ${D.sample.prompts_total.toLocaleString('en')} prompts ` +
      `(${D.sample.responses.toLocaleString('en')} of ${D.sample.responses_total.toLocaleString('en')} responses), whole prompts chosen by a fixed hash of ` +
      '(round, prompt_id) to stay under the page size limit. The list, filters and charts cover the sample; "responses" above counts the whole run. ' +
      '`neat-data view RUN --serve` shows every prompt.';
  }
}

function setupTabs(D) {
  const buttons = [...document.querySelectorAll('#tabs button')];
  if (D.rounds) buttons.find((b) => b.dataset.tab === 'rounds').hidden = false;
  if (D.heldout || (D.suites && D.suites.length)) buttons.find((b) => b.dataset.tab === 'heldout').hidden = false;
  for (const button of buttons) {
    button.addEventListener('click', () => {
      for (const other of buttons) {
        other.classList.toggle('active', other === button);
        document.getElementById(`tab-${other.dataset.tab}`).hidden = other !== button;
      }
    });
  }
}

async function main() {
  const status = document.getElementById('status-line');
  try {
    const D = await unpack('data-index');
    if (!D) throw new Error('this page holds no data');
    const state = { D, X: derive(D), page: 0, selected: null, order: [], filters: readFilters(), matcher: { active: false, test: () => true } };
    state.source = D.mode === 'served' ? new ServedSource(D) : new EmbeddedSource(D);
    let refreshes = 0;
    state.refresh = async () => {
      const f = readFilters();
      if (JSON.stringify(f) === JSON.stringify(state.filters)) { // e.g. the change event when the search box loses focus:
        document.body.dataset.settled = '1'; // re-drawing the list then would swallow the click that moved the focus
        return;
      }
      const mine = (refreshes += 1);
      let hits = null;
      if (f.search) {
        status.textContent = 'searching…';
        try { hits = await state.source.search(f.search); } catch (error) { status.textContent = `search failed: ${error}`; return; }
        if (mine !== refreshes) return; // a newer refresh started while this one searched
      }
      const { prompts, matcher } = matchingPrompts(D, state.X, f, hits);
      state.filters = f; state.matcher = matcher; state.order = sortPrompts(prompts, state.X, f.sort); state.page = 0;
      renderList(state); renderOverview(state);
      status.textContent = `${plural(prompts.length, 'prompt')} shown`;
      document.body.dataset.refreshes = String(mine);
      if (JSON.stringify(readFilters()) === JSON.stringify(f)) document.body.dataset.settled = '1';
    };
    state.open = (p) => {
      state.selected = p;
      for (const row of document.querySelectorAll('#prompt-list tbody tr')) row.classList.toggle('selected', Number(row.dataset.prompt) === p);
      renderDetail(state, p);
    };
    renderHeader(D);
    setupTabs(D);
    setupFilters(state);
    state.order = D.prompts.pid.map((_, p) => p);
    renderList(state); renderOverview(state);
    if (D.rounds) renderRounds(D);
    if (D.heldout || (D.suites && D.suites.length)) renderHeldout(D);
    document.body.dataset.ready = '1';
    document.body.dataset.settled = '1';
    window.neatFirstRenderMs = performance.now();
    status.textContent = `${plural(D.prompts.pid.length, 'prompt')} · first render ${Math.round(window.neatFirstRenderMs)} ms`;
    setTimeout(() => {
      state.source.load();
      state.source.ready.then(() => { document.body.dataset.texts = '1'; });
    }, 0);
    window.neatView = state; // for a console user (and the tests) to look at
  } catch (error) {
    status.textContent = `this page could not load its data: ${error}`;
    document.body.dataset.failed = String(error);
  }
}

main();
