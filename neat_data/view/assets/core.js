'use strict';
// neat-data view: helpers shared by every part of the page.
// Rule of this page: data (prompts, responses, errors, names) only ever enters the document as text —
// el() appends strings as Text nodes and sets attributes with setAttribute; nothing here parses HTML.

const STEER_LABEL = { pos: 'positive prompt', neg: 'negative prompt', none: 'no system prompt', dataset: "the dataset's own answers" };
const STEER_COLOUR = { pos: '#2e7d32', neg: '#c62828', none: '#616161' };

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [name, value] of Object.entries(props)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'class') node.className = value;
      else if (name === 'text') node.textContent = String(value);
      else if (name === 'dataset') Object.assign(node.dataset, value);
      else if (name.startsWith('on') && typeof value === 'function') node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? '' : String(value));
    }
  }
  appendAll(node, children);
  return node;
}

function appendAll(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child)); // a string becomes a Text node
  }
  return node;
}

function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

function fmt(value, digits = 4) {
  if (value === null || value === undefined || Number.isNaN(value)) return '–';
  if (Number.isInteger(value)) return String(value);
  const size = Math.abs(value);
  if (size >= 1000) return value.toFixed(0);
  if (size >= 100) return value.toFixed(1);
  return value.toFixed(digits);
}

function plural(n, word) { return `${n.toLocaleString('en')} ${word}${n === 1 ? '' : 's'}`; }

// Text with every case-insensitive occurrence of `query` wrapped in <mark> (built as nodes, never HTML).
function highlighted(text, query) {
  if (text === null || text === undefined) return [];
  if (!query) return [text];
  const lower = text.toLowerCase(); const needle = query.toLowerCase(); const parts = [];
  let at = 0;
  for (let hit = lower.indexOf(needle); hit !== -1 && parts.length < 400; hit = lower.indexOf(needle, at)) {
    if (hit > at) parts.push(text.slice(at, hit));
    parts.push(el('mark', { text: text.slice(hit, hit + needle.length) }));
    at = hit + needle.length;
  }
  if (at < text.length) parts.push(text.slice(at));
  return parts;
}

// A block of the page's data: base64 of gzip'd JSON, decoded with the browser's own DecompressionStream.
async function unpack(id) {
  const node = document.getElementById(id);
  const encoded = node ? node.textContent.trim() : '';
  if (!encoded) return null;
  node.textContent = ''; // the decoded copy is all we keep
  const binary = atob(encoded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
  return JSON.parse(await new Response(stream).text());
}

// Where texts and search answers come from: the page itself (embedded), or the local server (--serve).
class EmbeddedSource {
  constructor(index) { this.index = index; this.ready = new Promise((resolve) => { this.resolve = resolve; }); this.hay = null; }
  load() { unpack('data-texts').then((texts) => this.resolve(texts || { conv: [], resp: [], cut: null }), (error) => this.resolve({ error: String(error), conv: [], resp: [] })); }
  async texts(p) {
    const all = await this.ready;
    const first = this.index.prompts.r0[p]; const count = this.index.prompts.rn[p];
    return { conv: all.conv[p] || [], conv_len: (all.conv_len || [])[p] || [], resp: all.resp.slice(first, first + count), cut: all.cut, error: all.error };
  }
  async search(query) {
    const all = await this.ready;
    if (!this.hay) { // built on the first search: one lower-cased string per prompt
      const P = this.index.prompts; this.hay = new Array(P.pid.length);
      for (let p = 0; p < P.pid.length; p++) {
        const parts = (all.conv[p] || []).map((turn) => turn[1] || '');
        for (let r = P.r0[p]; r < P.r0[p] + P.rn[p]; r++) if (all.resp[r]) parts.push(all.resp[r]);
        this.hay[p] = parts.join('\n').toLowerCase();
      }
    }
    const needle = query.toLowerCase(); const found = new Set();
    for (let p = 0; p < this.hay.length; p++) if (this.hay[p].includes(needle)) found.add(p);
    return found;
  }
}

class ServedSource {
  constructor(index) { this.index = index; this.ready = Promise.resolve({}); }
  load() {}
  async texts(p) {
    const answer = await fetch(`api/prompt?i=${p}`);
    if (!answer.ok) throw new Error(`the server answered ${answer.status}`);
    return answer.json();
  }
  async search(query) {
    const answer = await fetch(`api/search?q=${encodeURIComponent(query)}`);
    if (!answer.ok) throw new Error(`the server answered ${answer.status}`);
    return new Set((await answer.json()).prompts);
  }
}
