#!/usr/bin/env node
// Builds the tokenizer fixtures under tests/fixtures/tokenizers/ with independent implementations:
// HF `tokenizers` (the official Rust library through its node binding) for the tokenizer.json
// fixtures, and Debian's `spm_train` / `spm_encode` (package `sentencepiece`) for the
// SentencePiece one. The C++ tokenizer tests compare their ids with the ones written here.
//
// Fixtures (each a directory with tokenizer.json or tokenizer.model, tokenizer_config.json and
// expected.json; strings.json is shared): llama3-bpe, gpt2-bpe, qwen2-nfc-bpe, deepseek3-bpe
// (byte-level BPE in each model family's layout), llama2-bytefallback and mistral-metaspace
// (SentencePiece conversions with byte fallback), spm-bpe (tokenizer.model). The tokenizers are
// trained here on a few KB of text, so they are small (about 2K tokens) but use the real formats.
//
// Usage (from the repository root; needs node >= 18, npm and `apt-get install sentencepiece`):
//   node scripts/make_tokenizer_fixtures.mjs
// The npm package is installed into a temporary directory, never into the repository. Set
// HELIX_TOKENIZERS_NODE_MODULES to a folder holding node_modules/tokenizers to skip the install.
//
// Everything is deterministic (seeded generator, fixed training text), so rerunning it with the same
// library versions rewrites the same files.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const TOKENIZERS_VERSION = '0.23.2';
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const out_dir = path.join(repo, 'tests', 'fixtures', 'tokenizers');
const temp_dirs = [];

function load_tokenizers() {
  let dir = process.env.HELIX_TOKENIZERS_NODE_MODULES;
  if (!dir) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'helix-tokenizers-'));
    temp_dirs.push(dir);
    fs.writeFileSync(path.join(dir, 'package.json'), '{"name":"helix-fixtures","private":true}');
    execFileSync('npm', ['install', '--no-audit', '--no-fund', `tokenizers@${TOKENIZERS_VERSION}`],
                 { cwd: dir, stdio: 'inherit' });
  }
  return createRequire(path.join(dir, 'package.json'))('tokenizers');
}

// mulberry32: a small seeded generator so the strings are the same on every run.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const english = `The quick brown fox jumps over the lazy dog. It's a well-known pangram, isn't it?
We'll see what they've done: I'm sure you'd agree that they're right. DON'T SHOUT, we'RE fine.
Inference runtimes stream tokens to clients; each token is decoded as soon as it is complete.
Numbers: 3.14159, 2718281828, 1,000,000 and 42 -- also dates like 2026-12-07 and times 21:25:02.
def main(argv):\n    for i in range(10):\n        print(f"value={i * 2}")\n    return 0\n
\tTabs\tand  double  spaces,   triple   spaces; trailing spaces   \n\n\nnew paragraphs.
{"model": "helix", "max_tokens": 128, "stream": true, "stop": ["\\n\\n", "</s>"]}
Email someone@example.com or visit https://example.org/path?query=1&x=y#frag today!
C'est déjà l'été à Paris; Straße, Übermaß, naïve café, résumé, jalapeño, smörgåsbord.
Москва — столица России. Привет, как дела? Україна, Київ. Ελληνικά: γειά σου κόσμε.
東京は日本の首都です。今日はいい天気ですね。北京是中国的首都。我喜欢学习新的语言。한국어 문장도 있습니다.
مرحبا بالعالم. اللغة العربية جميلة جداً. שלום עולם, עברית. سلام دنیا، فارسی.
नमस्ते दुनिया। हिन्दी भाषा बहुत सुंदर है। বাংলা ভাষা। தமிழ் மொழி. ภาษาไทยง่ายนิดเดียว.
Emoji: 😀 😂 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵 🇫🇷 ❤️ ✨ 🚀🚀🚀 👩🏿‍💻 🧑‍🤝‍🧑
Math ∑ ∫ √ ∞ ≈ ≠ ≤ ≥ π α β γ δ; arrows → ← ↔ ⇒; currency € £ ¥ ₹ $ ₿.
`;

// Pieces the string generator combines. Categories the tests care about: scripts, emoji sequences,
// combining marks (decomposed forms that NFC changes), whitespace runs, digit runs, contractions,
// special tokens inside text, and text that looks like tokenizer syntax.
const pieces = [
  'hello', 'Hello', ' world', 'the', ' The', 'quick', ' brown', 'fox', 'token', 'tokenizer',
  'stream', 'ing', 'inference', 'Helix', 'decode', 'runtime', 'a', 'I', ' x', 'zzz',
  "it's", "It'S", "don't", "we'll", "they've", "I'm", "you'd", "they're", "WE'RE", "'s", "'",
  "''", "o'clock", 'rock\'n\'roll',
  '0', '7', '42', '123', '1234', '12345', '2026', '3.14159', '1,000,000', '000000000', '٣٤٥', '१२३',
  '٤٢', '½', '²', '①',
  ' ', '  ', '   ', '    ', '\t', '\t\t', '\n', '\n\n', '\r\n', ' \n ', '\n   \n', '\u00a0',
  '\u3000', '\u2028', '\u200b', '\ufeff', '\u2003', '\u180e', '\u0085', '\u000b', '\u000c',
  '.', ',', '!', '?', '...', ':', ';', '--', '—', '(', ')', '[', ']', '{', '}', '"', '«', '»',
  '“', '”', '„', '‘', '’', '/', '\\', '|', '#', '$', '%', '^', '&', '*', '_', '+', '=', '<', '>',
  '~', '`', '@', 'https://example.org/a?b=c', 'foo@bar.com', '==>', '!=', '->', '::', '/*', '*/',
  'déjà', 'été', 'naïve', 'Straße', 'Übermaß', 'smörgåsbord', 'ñandú', 'Ærøskøbing', 'İstanbul',
  'e\u0301', 'a\u0300', 'n\u0303', 'o\u0308\u0304', 'A\u030a', '\u1100\u1161', '\u1112\u1161\u11ab',
  'x\u0336y\u0336', 'Z\u0351\u036b\u0343\u036a', '\u0301', '\u0308', 'ǹ', 'Å', 'Ω', 'ﬁ', 'Ⅳ',
  'Москва', 'привет', 'Україна', 'γειά', 'Ελληνικά', 'Ճ', 'ქართული', 'ᚠᛇᚻ',
  '東京', '日本語', '北京是中国的首都', '我喜欢', '今日は', 'カタカナ', 'ひらがな', '한국어', '가나다',
  '𠀀', '𪚥', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢', '𝟘𝟙𝟚',
  'مرحبا', 'العربية', 'اللُّغَة', 'שלום', 'עִבְרִית', 'فارسی', 'نستعلیق',
  'नमस्ते', 'हिन्दी', 'क्षत्रिय', 'বাংলা', 'தமிழ்', 'ภาษาไทย', 'ຂອບໃຈ', 'မြန်မာ', 'አማርኛ',
  '😀', '😂', '👍', '👍🏽', '👍🏿', '👨‍👩‍👧‍👦', '🏳️‍🌈', '🇯🇵', '🇫🇷', '❤️', '✨', '🚀', '👩🏿‍💻',
  '🧑‍🤝‍🧑', '#️⃣', '1️⃣', '\u{1f9d1}\u200d\u{1f4bb}', '🫠', '⌚', '☃',
  '∑', '∫', '√', '∞', '≈', 'π', '→', '⇒', '€', '£', '¥', '₹', '₿', '©', '™', '°C',
  '\ufffd', '\ue000', '\u{10ffff}', '\u0000', '\u0001', '\u001b[31m', '\u007f', '\u0080', '\u00ad',
  'Ġ', 'Ċ', 'ĠĠ', 'âĢĻ', '<0xAB>', '<0x0A>', '<unk>', '<s>', '</s>', '▁', '▁▁', '<|', '|>', '<|eot',
  '<|eot_id', 'eot_id|>', '<|im_start|>x', '<|begin_of_text|', '<<|eot_id|>>',
];
// Special and added tokens of the fixtures (also mixed into the strings).
const llama_specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|start_header_id|>',
                        '<|end_header_id|>', '<|eot_id|>', '<|reserved_special_token_0|>'];
const deepseek_specials = ['<｜begin▁of▁sentence｜>', '<｜end▁of▁sentence｜>', '<｜User｜>',
                           '<｜Assistant｜>'];
const specials_in_text = [...llama_specials, '<|endoftext|>', '<|im_start|>', '<|im_end|>',
                          '<tool_call>', '<|eot_id|><|eot_id|>', ...deepseek_specials];

function make_strings(count) {
  const r = rng(20261207);
  const pick = (a) => a[Math.floor(r() * a.length)];
  const strings = new Set(['', ' ', '  ', '\n', '\t', 'a', 'hello world', english]);
  for (const p of pieces) strings.add(p);
  for (const s of specials_in_text) {
    strings.add(s);
    strings.add(`Hello ${s} world`);
    strings.add(`${s}\n${s}`);
  }
  const lines = english.split('\n');
  for (const l of lines) strings.add(l);
  while (strings.size < count) {
    const kind = r();
    let s = '';
    if (kind < 0.15) {
      // A slice of the paragraph text, at a char boundary.
      const chars = Array.from(english);
      const a = Math.floor(r() * chars.length);
      s = chars.slice(a, a + 1 + Math.floor(r() * 60)).join('');
    } else if (kind < 0.25) {
      // Whitespace and digit runs.
      const ws = [' ', '\t', '\n', '\r\n', '\u00a0', '\u3000'];
      const n = 1 + Math.floor(r() * 6);
      for (let i = 0; i < n; i++) {
        s += pick(ws).repeat(1 + Math.floor(r() * 5));
        s += r() < 0.5 ? String(Math.floor(r() * 1e9)) : pick(pieces);
      }
    } else if (kind < 0.3) {
      // Random code points from assorted blocks (no surrogates: JS strings must stay valid).
      const blocks = [[0x20, 0x7e], [0xa0, 0x24f], [0x370, 0x3ff], [0x400, 0x4ff], [0x590, 0x6ff],
                      [0x900, 0x97f], [0xe00, 0xe7f], [0x1100, 0x11ff], [0x3040, 0x30ff],
                      [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0x1f300, 0x1f6ff], [0x1f900, 0x1f9ff],
                      [0x300, 0x36f], [0x2000, 0x206f]];
      const n = 1 + Math.floor(r() * 12);
      for (let i = 0; i < n; i++) {
        const [lo, hi] = pick(blocks);
        s += String.fromCodePoint(lo + Math.floor(r() * (hi - lo + 1)));
      }
    } else {
      const n = 1 + Math.floor(r() * 8);
      for (let i = 0; i < n; i++) {
        const v = r();
        if (v < 0.08) s += pick(specials_in_text);
        else if (v < 0.3) s += ' ';
        s += pick(pieces);
      }
    }
    strings.add(s);
  }
  return [...strings];
}

function training_text() {
  const r = rng(7);
  let t = english.repeat(3);
  for (let i = 0; i < 300; i++) {
    let line = '';
    const n = 3 + Math.floor(r() * 10);
    for (let j = 0; j < n; j++) line += (r() < 0.6 ? ' ' : '') + pieces[Math.floor(r() * pieces.length)];
    t += line + '\n';
  }
  return t;
}

// Patterns as the models ship them in tokenizer.json.
const LLAMA3_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_PATTERN =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// DeepSeek-V3: digit runs, CJK runs, then a pattern with \p{P} / \p{S} / \p{M} classes.
const DEEPSEEK3_PATTERNS = [
  '\\p{N}{1,3}',
  '[一-龥\u3040-ゟ゠-ヿ]+',
  "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];

function split_bytelevel(...patterns) {
  return {
    type: 'Sequence',
    pretokenizers: [
      ...patterns.map((p) => ({ type: 'Split', pattern: { Regex: p }, behavior: 'Isolated',
                                invert: false })),
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  };
}
const BYTELEVEL_DECODER = { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true };

function bpe_model(vocab, merges, { ignore_merges = false, byte_fallback = false, unk = null } = {}) {
  return { type: 'BPE', dropout: null, unk_token: unk, continuing_subword_prefix: null,
           end_of_word_suffix: null, fuse_unk: byte_fallback, byte_fallback, ignore_merges,
           vocab, merges };
}

function tokenizer_json({ normalizer = null, pre_tokenizer, post_processor = null, decoder, model,
                          added_tokens = [] }) {
  return { version: '1.0', truncation: null, padding: null, added_tokens, normalizer, pre_tokenizer,
           post_processor, decoder, model };
}

function added(id, content, special) {
  return { id, content, single_word: false, lstrip: false, rstrip: false, normalized: !special,
           special };
}

// Trains a byte-level BPE with the library on the training text, then gives every one of the 256
// byte symbols an id (real byte-level vocabularies cover all bytes; a few KB of text do not).
function train_bytelevel(tk, tmp, pre_tokenizer) {
  const text_path = path.join(tmp, 'train.txt');
  fs.writeFileSync(text_path, training_text());
  const start = tokenizer_json({ pre_tokenizer, decoder: BYTELEVEL_DECODER, model: bpe_model({}, []) });
  const t = tk.Tokenizer.fromString(JSON.stringify(start));
  t.train([text_path]);
  const trained_path = path.join(tmp, 'trained.json');
  t.save(trained_path, false);
  const trained = JSON.parse(fs.readFileSync(trained_path, 'utf8'));
  const vocab = trained.model.vocab;
  let next = Object.keys(vocab).length;
  for (const sym of tk.byteLevelAlphabet().sort()) {
    if (!(sym in vocab)) vocab[sym] = next++;
  }
  return { vocab, merges: trained.model.merges, size: next };
}

// Trains a BPE on "▁"-joined words (Metaspace) and lays the vocabulary out as SentencePiece
// conversions do: <unk> <s> </s>, the 256 byte tokens <0x00>..<0xFF>, then the trained pieces.
function train_metaspace(tk, tmp) {
  const text_path = path.join(tmp, 'train_metaspace.txt');
  fs.writeFileSync(text_path, training_text());
  const start = tokenizer_json({
    pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'always', split: true },
    decoder: null, model: bpe_model({}, []),
  });
  const t = tk.Tokenizer.fromString(JSON.stringify(start));
  t.train([text_path]);
  const trained_path = path.join(tmp, 'trained_metaspace.json');
  t.save(trained_path, false);
  const trained = JSON.parse(fs.readFileSync(trained_path, 'utf8'));
  const vocab = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) {
    vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  }
  const pieces = Object.entries(trained.model.vocab).sort((a, b) => a[1] - b[1]);
  let next = Object.keys(vocab).length;
  for (const [piece] of pieces) {
    if (!(piece in vocab)) vocab[piece] = next++;
  }
  return { vocab, merges: trained.model.merges };
}

async function encode_all(t, strings, with_special_count) {
  const ids = [];
  const ids_special = [];
  const decoded = [];
  for (let i = 0; i < strings.length; i++) {
    const e = await t.encode(strings[i], null, { addSpecialTokens: false });
    ids.push(e.getIds());
    if (i < with_special_count) {
      const es = await t.encode(strings[i], null, { addSpecialTokens: true });
      ids_special.push(es.getIds());
      decoded.push(await t.decode(es.getIds(), false));
    }
  }
  return { ids, ids_special, decoded };
}

function write_json(file, value) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(value) + '\n');
}

async function write_fixture(tk, name, json, config, strings) {
  const dir = path.join(out_dir, name);
  // The library must accept the file as written: load it back and encode with the loaded copy.
  const t = tk.Tokenizer.fromString(JSON.stringify(json));
  write_json(path.join(dir, 'tokenizer.json'), json);
  if (config) write_json(path.join(dir, 'tokenizer_config.json'), config);
  const enc = await encode_all(t, strings, 300);
  write_json(path.join(dir, 'expected.json'), {
    generator: `tokenizers (npm) ${TOKENIZERS_VERSION}`,
    vocab_size: t.getVocabSize(true),
    ...enc,
  });
  console.log(`${name}: vocab ${t.getVocabSize(true)}, ${strings.length} strings`);
}

function spm_fixture(tmp, strings) {
  const dir = path.join(out_dir, 'spm-bpe');
  fs.mkdirSync(dir, { recursive: true });
  const text_path = path.join(tmp, 'spm_train.txt');
  fs.writeFileSync(text_path, training_text());
  // Relative paths: the model records its training input and prefix, which must not be the
  // random temporary directory for the output to be reproducible.
  execFileSync('spm_train', ['--input=spm_train.txt', '--model_prefix=spm',
                             '--vocab_size=800', '--model_type=bpe', '--normalization_rule_name=identity',
                             '--remove_extra_whitespaces=false', '--allow_whitespace_only_pieces=true', '--byte_fallback=true',
                             '--character_coverage=0.98', '--num_threads=1',
                             '--split_digits=true', '--seed_sentencepiece_size=20000'],
               { cwd: tmp, stdio: ['ignore', 'ignore', 'pipe'] });
  fs.copyFileSync(path.join(tmp, 'spm.model'), path.join(dir, 'tokenizer.model'));
  // spm_encode reads one sentence a line: keep the strings without line breaks.
  const lines = strings.filter((s) => !/[\r\n]/.test(s) && !s.includes('\u0000'));
  const input = path.join(tmp, 'spm_in.txt');
  fs.writeFileSync(input, lines.join('\n') + '\n');
  const ids_text = execFileSync('spm_encode', [`--model=${path.join(dir, 'tokenizer.model')}`,
                                               '--output_format=id', `--input=${input}`],
                                { maxBuffer: 1 << 28 }).toString('utf8');
  const ids = ids_text.split('\n').slice(0, lines.length)
    .map((l) => (l.trim() === '' ? [] : l.trim().split(' ').map(Number)));
  if (ids.length !== lines.length) throw new Error('spm_encode returned a different line count');
  write_json(path.join(dir, 'tokenizer_config.json'),
             { add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>' });
  write_json(path.join(dir, 'expected.json'), { generator: 'spm_encode (Debian sentencepiece)',
                                                strings: lines, ids });
  console.log(`spm-bpe: ${lines.length} strings`);
}

async function main() {
  const tk = load_tokenizers();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'helix-fixtures-'));
  temp_dirs.push(tmp);
  const strings = make_strings(3000);
  write_json(path.join(out_dir, 'strings.json'), strings);

  // Llama 3 layout: Split(regex, Isolated) + ByteLevel(use_regex=false), ignore_merges, merges as
  // [a, b] pairs, 256 reserved-style special tokens after the vocab, BOS through TemplateProcessing.
  {
    const { vocab, merges, size } = train_bytelevel(tk, tmp, split_bytelevel(LLAMA3_PATTERN));
    const added_tokens = llama_specials.map((c, i) => added(size + i, c, true));
    const bos = size;
    const json = tokenizer_json({
      pre_tokenizer: split_bytelevel(LLAMA3_PATTERN),
      post_processor: {
        type: 'Sequence',
        processors: [
          { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
          { type: 'TemplateProcessing',
            single: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } },
                     { Sequence: { id: 'A', type_id: 0 } }],
            pair: [{ SpecialToken: { id: '<|begin_of_text|>', type_id: 0 } },
                   { Sequence: { id: 'A', type_id: 0 } },
                   { SpecialToken: { id: '<|begin_of_text|>', type_id: 1 } },
                   { Sequence: { id: 'B', type_id: 1 } }],
            special_tokens: { '<|begin_of_text|>': { id: '<|begin_of_text|>', ids: [bos],
                                                      tokens: ['<|begin_of_text|>'] } } },
        ],
      },
      decoder: BYTELEVEL_DECODER,
      model: bpe_model(vocab, merges, { ignore_merges: true }),
      added_tokens,
    });
    await write_fixture(tk, 'llama3-bpe', json,
                        { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>',
                          model_max_length: 131072 }, strings);
  }

  // GPT-2 layout: ByteLevel(use_regex=true) alone, merges as "a b" strings, <|endoftext|>.
  {
    const pre = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
    const { vocab, merges, size } = train_bytelevel(tk, tmp, pre);
    const json = tokenizer_json({
      pre_tokenizer: pre,
      post_processor: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
      decoder: BYTELEVEL_DECODER,
      model: bpe_model(vocab, merges.map((m) => m.join(' '))),
      added_tokens: [added(size, '<|endoftext|>', true)],
    });
    await write_fixture(tk, 'gpt2-bpe', json,
                        { bos_token: '<|endoftext|>', eos_token: '<|endoftext|>' }, strings);
  }

  // Qwen2 layout: NFC normalizer, Split with the single-digit pattern + ByteLevel, chat specials,
  // one non-special added token (matched after normalisation).
  {
    const { vocab, merges, size } = train_bytelevel(tk, tmp, split_bytelevel(QWEN2_PATTERN));
    const json = tokenizer_json({
      normalizer: { type: 'NFC' },
      pre_tokenizer: split_bytelevel(QWEN2_PATTERN),
      post_processor: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      decoder: BYTELEVEL_DECODER,
      model: bpe_model(vocab, merges, { ignore_merges: false }),
      added_tokens: [added(size, '<|endoftext|>', true), added(size + 1, '<|im_start|>', true),
                     added(size + 2, '<|im_end|>', true), added(size + 3, '<tool_call>', false)],
    });
    await write_fixture(tk, 'qwen2-nfc-bpe', json,
                        { bos_token: null, eos_token: '<|im_end|>', pad_token: '<|endoftext|>' },
                        strings);
  }

  // DeepSeek-V3 layout: three Splits + ByteLevel, an empty normalizer Sequence, full-width
  // special tokens (their characters are outside the byte table: they decode as themselves).
  {
    const pre = split_bytelevel(...DEEPSEEK3_PATTERNS);
    const { vocab, merges, size } = train_bytelevel(tk, tmp, pre);
    const added_tokens = deepseek_specials.map((c, i) => added(size + i, c, true));
    const bos = deepseek_specials[0];
    const json = tokenizer_json({
      normalizer: { type: 'Sequence', normalizers: [] },
      pre_tokenizer: pre,
      post_processor: {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
               { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { [bos]: { id: bos, ids: [size], tokens: [bos] } },
      },
      decoder: BYTELEVEL_DECODER,
      model: bpe_model(vocab, merges, { ignore_merges: false }),
      added_tokens,
    });
    const token = (content) => ({ __type: 'AddedToken', content, lstrip: false, normalized: true,
                                  rstrip: false, single_word: false });
    await write_fixture(tk, 'deepseek3-bpe', json,
                        { add_bos_token: true, add_eos_token: false, bos_token: token(bos),
                          eos_token: token(deepseek_specials[1]) }, strings);
  }

  // SentencePiece-style BPE as tokenizer.json (Llama 2 and Mistral conversions): "▁" for spaces,
  // <unk> <s> </s> and 256 byte-fallback tokens first, decoded by Replace + ByteFallback + Fuse +
  // Strip. Two layouts: Llama 2's Prepend + Replace normalizers, and the newer Metaspace
  // pre-tokenizer with prepend_scheme "first".
  {
    const { vocab, merges } = train_metaspace(tk, tmp);
    const decoder = {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    };
    const added_tokens = [added(0, '<unk>', true), added(1, '<s>', true), added(2, '</s>', true)];
    const post_processor = {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
             { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    };
    const model = bpe_model(vocab, merges, { byte_fallback: true, unk: '<unk>' });
    const config = { add_bos_token: true, add_eos_token: false, bos_token: '<s>', eos_token: '</s>',
                     unk_token: '<unk>' };
    await write_fixture(tk, 'llama2-bytefallback', tokenizer_json({
      normalizer: { type: 'Sequence', normalizers: [
        { type: 'Prepend', prepend: '▁' },
        { type: 'Replace', pattern: { String: ' ' }, content: '▁' },
      ] },
      pre_tokenizer: null, post_processor, decoder, model, added_tokens,
    }), config, strings);
    await write_fixture(tk, 'mistral-metaspace', tokenizer_json({
      pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
      post_processor, decoder, model, added_tokens,
    }), config, strings);
  }

  spm_fixture(tmp, strings);
}

async function main_cleaning_up() {
  try {
    await main();
  } finally {
    for (const d of temp_dirs) fs.rmSync(d, { recursive: true, force: true });
  }
}

await main_cleaning_up();
