/* jaxseg serve: the page's logic. Talks to the JSON API of jaxseg/serve/app.py; every text from
   the server or from a file name goes into the page through textContent, never as HTML. */
(function () {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const SLOT_NAMES = { flair: 'FLAIR', t1: 'T1', t1ce: 'T1ce (contrast)', t2: 'T2', seg: 'Segmentation',
    slice: 'Slice (.mat, PNG or TIFF)', slice_mask: 'Mask of the slice (PNG or TIFF)' };
  const ACCEPT = { slice: '.mat,.png,.tif,.tiff', slice_mask: '.png,.tif,.tiff' };
  let info = null;
  let cases = [];
  let pollTimer = null;
  let events = null;
  let eventsBroken = false;
  let shownJob = null;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const mb = (bytes) => (bytes < 1048576 ? `${Math.max(1, Math.round(bytes / 1024))} KB`
    : `${(bytes / 1048576).toFixed(bytes < 10485760 ? 1 : 0)} MB`);

  async function api(method, path, body) {
    // The header marks the request as the page's own: the server refuses state changes without it
    // (or a JSON body), which another site's page cannot send without a CORS preflight.
    const options = { method, headers: { 'X-Jaxseg-Request': '1' }, credentials: 'same-origin' };
    if (body !== undefined) {
      options.body = JSON.stringify(body);
      options.headers['Content-Type'] = 'application/json';
    }
    const answer = await fetch(path, options);
    const data = await answer.json().catch(() => ({ error: `the server answered ${answer.status}` }));
    if (!answer.ok) throw new Error(data.error || `the server answered ${answer.status}`);
    return data;
  }

  const checkpoint = () => info.checkpoints.find((c) => c.id === $('checkpoint').value);
  // A model trained on 2D slices explains one uploaded slice; the others a case of NIfTI volumes.
  const readsSlices = (c) => Boolean(c) && c.input === 'slice';
  const slotsOf = (c) => info.slots.filter((s) => info.slice_slots.includes(s) === readsSlices(c));
  const source = () => (document.querySelector('input[name=source]:checked') || {}).value || 'upload';

  // ----------------------------------------------------------------------------- model
  function renderModel() {
    const c = checkpoint();
    if (!c) {  // no model yet: the page stays up and says what to do
      $('model-info').textContent = info.message || 'No model is available.';
      $('model-info').classList.add('error');
      $('slots').replaceChildren();
      updateReadiness();
      return;
    }
    $('model-info').textContent = `${c.model} · target ${c.target} (${c.regions.join(', ')}) · needs ` +
      (readsSlices(c) ? `one 2D slice (${c.modalities.join(' + ')}) · `
        : `${c.modalities.map((m) => SLOT_NAMES[m]).join(' + ')} · `) +
      (c.dropout > 0 ? `dropout ${c.dropout} (MC-dropout uncertainty available)` : 'no dropout (no MC-dropout uncertainty)') +
      ` · ${c.path}`;
    $('mc-samples').disabled = !(c.dropout > 0);  // without dropout there is nothing to sample
    const target = $('target');
    const old = target.value;
    target.replaceChildren();
    // The dataset's cases are volumes: a slice model explains uploads only.
    const caseRadio = $('source-case');
    caseRadio.disabled = !info.data || readsSlices(c);
    caseRadio.parentElement.classList.toggle('disabled', caseRadio.disabled);
    caseRadio.parentElement.title = !info.data ? 'start the server with --data DIR to list the cases of a dataset'
      : readsSlices(c) ? 'this model reads one uploaded 2D slice; the dataset lists volumes' : '';
    if (caseRadio.disabled && caseRadio.checked) { $('source-upload').checked = true; showSource(); }
    $('file-many').parentElement.parentElement.hidden = readsSlices(c);
    const options = [['mean', 'mean tumor probability'], ['predicted', 'predicted tumor']]
      .concat(c.regions.map((r) => [r, `mean ${r} probability`]));
    for (const [value, text] of options) target.append(el('option', { value }, text));
    if (options.some(([v]) => v === old)) target.value = old;
    renderSlots();
  }

  // ----------------------------------------------------------------------------- uploads
  function renderSlots() {
    const c = checkpoint();
    const box = $('slots');
    box.replaceChildren();
    const slice = info.uploads.slice;
    for (const slot of slotsOf(c)) {
      const needed = readsSlices(c) ? slot === 'slice' : c.modalities.includes(slot);
      const badge = slot === 'seg' ? 'optional: shows Dice and truth overlays'
        : slot === 'slice_mask' ? (slice && slice.has_mask ? 'not used: the .mat holds its own mask'
          : 'optional: shows Dice and the truth outline')
          : needed ? 'needed' : 'not used by this model';
      const row = el('div', { class: 'slot' + (needed ? ' needed' : ''), id: `slot-${slot}` });
      const head = el('div', { class: 'slot-head' });
      head.append(el('span', { class: 'slot-name' }, SLOT_NAMES[slot]), el('span', { class: 'badge' }, badge));
      const u = info.uploads[slot];
      const input = el('input', { type: 'file', id: `file-${slot}`, accept: ACCEPT[slot] || '.nii,.nii.gz,.gz', class: 'file-input' });
      input.addEventListener('change', () => { if (input.files.length) upload(slot, input.files[0]); });
      const picker = el('label', { class: 'file-button' }, u ? 'Replace file…' : 'Choose file…');
      picker.append(input);
      const status = el('div', { class: 'slot-status', id: `status-${slot}` });
      const remove = el('button', { type: 'button', class: 'link', id: `remove-${slot}` }, 'remove');
      remove.addEventListener('click', async () => {
        await api('DELETE', `/api/upload/${slot}`).catch(() => null);
        delete info.uploads[slot];
        input.value = '';
        renderSlots();
      });
      if (u && u.spacing === null) {  // a 2D slice: pixels, no geometry
        status.textContent = `✓ ${u.name} · ${u.shape.join('×')} pixels · ${u.kind.toUpperCase()}` +
          (u.slot === 'slice' ? ` · ${u.channels === 1 ? 'grayscale' : `${u.channels} channels`}` : '') +
          (u.slot === 'slice' && u.has_mask ? ' · with its mask' : '') + ` · ${mb(u.bytes)}`;
        status.classList.add('ok');
      } else if (u) {
        status.textContent = `✓ ${u.name} · ${u.shape.join('×')} voxels · ${u.spacing.join('×')} mm · ${mb(u.bytes)}` +
          (u.labels ? ` · ${u.labels === 'brats2023' ? 'labels 0,1,2,3' : 'labels 0,1,2,4'}` : '');
        status.classList.add('ok');
      }
      remove.hidden = !u;
      row.append(head, picker, status, remove);
      box.append(row);
    }
    $('upload-limit').textContent = readsSlices(c)
      ? `One 2D slice (.mat, PNG or TIFF) and, for an image, its mask; up to ${mb(info.max_upload_bytes)} each.`
      : `NIfTI files (.nii or .nii.gz) of one case, up to ${mb(info.max_upload_bytes)} each.`;
    updateReadiness();
  }

  function upload(slot, file, finished) {
    finished = finished || (() => {});
    const status = $(`status-${slot}`);
    status.className = 'slot-status';
    if (file.size > info.max_upload_bytes) {
      status.classList.add('error');
      status.textContent = `${file.name} is ${mb(file.size)}; this server accepts up to ${mb(info.max_upload_bytes)}.`;
      finished();
      return;
    }
    const request = new XMLHttpRequest();
    request.open('POST', `/api/upload/${slot}`);
    request.setRequestHeader('X-Filename', encodeURIComponent(file.name));
    request.setRequestHeader('X-Jaxseg-Request', '1');
    request.upload.onprogress = (e) => {
      if (e.lengthComputable) status.textContent = `uploading ${file.name}: ${Math.round(100 * e.loaded / e.total)} %`;
    };
    request.onload = () => {
      let data = {};
      try { data = JSON.parse(request.responseText); } catch (e) { data = { error: `the server answered ${request.status}` }; }
      if (request.status === 200) {
        info.uploads[slot] = data;
        renderSlots();
      } else {
        status.classList.add('error');
        const kept = info.uploads[slot] ? ` (the earlier ${info.uploads[slot].name} is kept)` : '';
        status.textContent = (data.error || `the server answered ${request.status}`) + kept;
        $(`file-${slot}`).value = '';
        updateReadiness();
      }
      finished();
    };
    request.onerror = () => {
      status.classList.add('error');
      status.textContent = `${file.name}: the upload failed (the connection broke)`;
      updateReadiness();
      finished();
    };
    status.textContent = `uploading ${file.name}…`;
    request.send(file);
    updateReadiness(true);
  }

  // Several files at once: the slot of each from its BraTS suffix (the same names data/brats.py
  // reads); one upload after another, so the server checks each against the ones before.
  const SUFFIX_SLOTS = { flair: 'flair', t1: 't1', t1ce: 't1ce', t2: 't2', seg: 'seg',
    t2f: 'flair', t1n: 't1', t1c: 't1ce', t2w: 't2' };
  function slotOf(name) {
    const match = /[_-]([a-z0-9]+)\.nii(\.gz)?$/i.exec(name);
    return match ? SUFFIX_SLOTS[match[1].toLowerCase()] : undefined;
  }

  async function uploadMany(files) {
    const unknown = [];
    for (const file of files) {
      const slot = slotOf(file.name);
      if (!slot) { unknown.push(file.name); continue; }
      await new Promise((done) => upload(slot, file, done));
    }
    const message = $('input-message');
    if (unknown.length) {
      message.textContent = `Could not tell the modality of ${unknown.join(', ')} from the name; ` +
        'choose it in its slot below.';
      message.classList.add('error');
    }
  }

  // ----------------------------------------------------------------------------- dataset cases
  function renderCases() {
    const select = $('case');
    select.replaceChildren();
    for (const c of cases) {
      select.append(el('option', { value: c.id },
        `${c.id} (${c.modalities.join(', ')}${c.seg ? ', seg' : ''})`));
    }
    $('case-info').textContent = `${cases.length} case${cases.length === 1 ? '' : 's'} in ${info.data_root}`;
  }

  // ----------------------------------------------------------------------------- readiness
  function updateReadiness(uploading) {
    const message = $('input-message');
    const running = shownJob && (shownJob.state === 'queued' || shownJob.state === 'running');
    let problem = '';
    const c = checkpoint();
    if (!c) {
      problem = 'No model is available on this server yet (see 1 · Model).';
    } else if (readsSlices(c)) {
      if (!info.uploads.slice) problem = 'This model reads one 2D slice: upload a .mat, PNG or TIFF file.';
    } else if (source() === 'upload') {
      const missing = c.modalities.filter((m) => !info.uploads[m]);
      if (missing.length) {
        problem = `This model needs ${c.modalities.map((m) => SLOT_NAMES[m]).join(', ')}; ` +
          `missing: ${missing.map((m) => SLOT_NAMES[m]).join(', ')}.`;
      }
    } else {
      const chosen = cases.find((x) => x.id === $('case').value);
      const missing = chosen ? c.modalities.filter((m) => !chosen.modalities.includes(m)) : [];
      if (!chosen) problem = 'Choose a case.';
      else if (missing.length) problem = `Case ${chosen.id} has no ${missing.join(', ')} image, which this model needs.`;
    }
    message.textContent = problem || (running ? 'A job of yours is running; the next can start when it ends.' : 'Ready.');
    message.classList.toggle('error', Boolean(problem));
    $('run').disabled = Boolean(problem) || Boolean(uploading) || running;
  }

  // ----------------------------------------------------------------------------- jobs
  async function run() {
    $('run').disabled = true;
    $('job-error').textContent = '';
    const mc = Number($('mc-samples').value);
    try {
      const job = await api('POST', '/api/jobs', {
        checkpoint: $('checkpoint').value, source: source(), case: $('case').value,
        mc_samples: Number.isInteger(mc) ? mc : 10, target: $('target').value,
      });
      showJob(job);
    } catch (error) {
      $('job').hidden = false;
      $('job-state').textContent = 'not started';
      $('job-error').textContent = error.message;
      updateReadiness();
    }
  }

  function showJob(job) {
    shownJob = job;
    $('job').hidden = false;
    const states = { queued: job.queue_position ? `waiting: ${job.queue_position} job(s) ahead` : 'waiting to start',
      running: 'running', done: 'done', failed: 'failed', interrupted: 'interrupted (the server stopped)' };
    $('job-state').textContent = states[job.state] || job.state;
    $('job-percent').textContent = `${Math.round(100 * job.progress)} %`;
    $('progress').value = job.progress;
    $('job-steps').replaceChildren(...job.steps.map((s) => el('li', {}, s)));
    $('job-error').textContent = job.error || '';
    document.documentElement.dataset.job = job.state;
    if (job.state === 'done' && $('results').dataset.job !== job.id) showResult(job);
    if (job.state === 'queued' || job.state === 'running') follow(job.id);
    else if (events) { events.close(); events = null; }
    updateReadiness();
  }

  // Progress is pushed by server-sent events; if the stream breaks (a proxy that buffers, an
  // old browser), the page falls back to asking every half second.
  function follow(id) {
    if (events && events.jobId === id) return;
    if (events) events.close();
    clearTimeout(pollTimer);
    if (eventsBroken || typeof EventSource === 'undefined') { pollTimer = setTimeout(() => poll(id), 500); return; }
    events = new EventSource(`/api/jobs/${id}/events`);
    events.jobId = id;
    events.onmessage = (e) => showJob(JSON.parse(e.data));
    events.onerror = () => {
      if (!events || events.jobId !== id) return;
      events.close();
      events = null;
      eventsBroken = true;
      if (shownJob && shownJob.id === id && (shownJob.state === 'queued' || shownJob.state === 'running')) follow(id);
    };
  }

  async function poll(id) {
    try {
      showJob(await api('GET', `/api/jobs/${id}`));  // follows it again while it is active
    } catch (error) {
      $('job-error').textContent = error.message;
    }
  }

  function showResult(job) {
    const r = job.result;
    $('results').hidden = false;
    $('results').dataset.job = job.id;
    $('result-case').textContent = r.case;
    $('result-source').textContent = job.description;
    $('result-caption').textContent = r.caption;
    const table = $('result-volumes');
    table.replaceChildren();
    const pixels = !r.volumes_ml && r.areas_px;  // a 2D slice: areas in pixels, not volumes
    const volumes = (pixels ? r.areas_px : r.volumes_ml) || {};
    const regions = Object.keys(volumes.predicted || {});
    const head = el('tr');
    head.append(el('th', {}, pixels ? 'pixels' : 'mL'), ...regions.map((k) => el('th', { class: 'num' }, k)));
    table.append(head);
    for (const [which, values] of Object.entries(volumes)) {
      const row = el('tr');
      row.append(el('td', {}, which.replace('_', ' ')),
        ...regions.map((k) => el('td', { class: 'num' }, pixels ? String(values[k]) : values[k].toFixed(2))));
      table.append(row);
    }
    const list = $('downloads');
    list.replaceChildren();
    for (const f of r.files) {
      const item = el('li');
      const link = el('a', { href: f.url, download: f.name, id: `download-${f.key}` }, f.label);
      item.append(link, el('span', { class: 'muted' }, ` ${f.name}`));
      list.append(item);
    }
    $('report').src = r.report_url;  // fitReport() sizes it once the report has laid itself out
    document.documentElement.dataset.result = job.id;
  }

  // The report is same-origin: make the iframe as tall as the report, so the page scrolls as one
  // (its summary, faithfulness and volume cards sit below the views).
  function fitReport() {
    const frame = $('report');
    let tries = 0;
    const fit = () => {
      const doc = frame.contentDocument;
      if (!doc || !doc.documentElement) return;
      frame.style.height = `${doc.documentElement.scrollHeight}px`;
      if (doc.documentElement.dataset.ready !== 'true' && ++tries < 100) setTimeout(fit, 200);
    };
    fit();
  }

  function showSource() {
    $('upload-panel').hidden = source() !== 'upload';
    $('case-panel').hidden = source() !== 'case';
    updateReadiness();
  }

  // ----------------------------------------------------------------------------- start
  async function start() {
    info = await api('GET', '/api/info');
    const select = $('checkpoint');
    for (const c of info.checkpoints) select.append(el('option', { value: c.id }, c.label));
    select.disabled = !info.checkpoints.length;
    select.addEventListener('change', () => { renderModel(); });
    if (info.data) {
      cases = await api('GET', '/api/cases');
      renderCases();
    } else {
      $('source-case').disabled = true;
      $('source-case').parentElement.title = 'start the server with --data DIR to list the cases of a dataset';
      $('source-case').parentElement.classList.add('disabled');
    }
    for (const radio of document.querySelectorAll('input[name=source]')) radio.addEventListener('change', showSource);
    $('case').addEventListener('change', () => updateReadiness());
    $('run').addEventListener('click', run);
    $('file-many').addEventListener('change', (e) => {
      const files = [...e.target.files];
      e.target.value = '';
      uploadMany(files);
    });
    $('report').addEventListener('load', fitReport);
    renderModel();
    const last = info.jobs[info.jobs.length - 1];  // a reload shows this session's latest job
    if (last) showJob(last);
    document.documentElement.dataset.ready = 'true';
  }

  start().catch((error) => {
    const message = $('input-message');
    message.textContent = `The page could not start: ${error.message}`;
    message.classList.add('error');
  });
})();
