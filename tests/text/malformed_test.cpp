// Untrusted tokenizer files: clear errors, never a crash, bounded sizes; and seeded fuzz-style
// runs over mutated files and random text.
#include <random>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/text/text_test_util.hpp"
#include "text/detokenizer.hpp"
#include "text/tokenizer.hpp"
#include "text/utf8.hpp"

namespace helix::text {
namespace {

using json = nlohmann::json;
using testing::temp_dir;
const std::filesystem::path fixtures = std::filesystem::path(HELIX_FIXTURES_DIR) / "tokenizers";

std::string fixture_file(std::string_view dir, std::string_view name) {
  return read_file_bounded(fixtures / dir / name, 64u << 20).value();
}

json llama3_json() {
  return json::parse(fixture_file("llama3-bpe", "tokenizer.json"));
}

// Loads a directory holding only `tokenizer.json` = `content`.
status load_json_text(const std::string& content, const tokenizer_limits& limits = {}) {
  temp_dir dir;
  dir.write("tokenizer.json", content);
  auto tok = load_tokenizer(dir.path(), limits);
  return tok ? ok_status() : tok.error();
}

void expect_error(const status& st, errc code, std::string_view needle) {
  EXPECT_EQ(st.code(), code) << st;
  EXPECT_NE(st.message().find(needle), std::string::npos)
      << "message \"" << st.message() << "\" does not name \"" << needle << "\"";
}

TEST(LoadTokenizer, DirectoryWithoutTokenizerIsNotFoundNamingIt) {
  temp_dir dir;
  auto tok = load_tokenizer(dir.path());
  ASSERT_FALSE(tok.has_value());
  expect_error(tok.error(), errc::not_found, dir.path().string());
  auto missing = load_tokenizer(dir.path() / "nope");
  EXPECT_EQ(missing.error().code(), errc::not_found);
}

TEST(LoadTokenizer, PrefersTokenizerJsonOverTokenizerModel) {
  temp_dir dir;
  dir.write("tokenizer.json", fixture_file("gpt2-bpe", "tokenizer.json"));
  dir.write("tokenizer.model", fixture_file("spm-bpe", "tokenizer.model"));
  auto tok = load_tokenizer(dir.path());
  ASSERT_TRUE(tok.has_value()) << tok.error();
  EXPECT_EQ((*tok)->kind(), "tokenizer.json (BPE)");
  dir.remove("tokenizer.json");
  auto spm = load_tokenizer(dir.path());
  ASSERT_TRUE(spm.has_value()) << spm.error();
  EXPECT_EQ((*spm)->kind(), "tokenizer.model (SentencePiece)");
}

TEST(LoadTokenizer, WithoutConfigSpecialIdsComeFromAddedTokens) {
  temp_dir dir;
  dir.write("tokenizer.json", fixture_file("llama3-bpe", "tokenizer.json"));
  auto tok = load_tokenizer(dir.path());
  ASSERT_TRUE(tok.has_value()) << tok.error();
  EXPECT_EQ((*tok)->special_ids().bos, (*tok)->token_to_id("<|begin_of_text|>"));
  EXPECT_EQ((*tok)->special_ids().eos, (*tok)->token_to_id("<|end_of_text|>"));
  dir.write("tokenizer.json", fixture_file("deepseek3-bpe", "tokenizer.json"));
  tok = load_tokenizer(dir.path());
  ASSERT_TRUE(tok.has_value()) << tok.error();
  EXPECT_EQ((*tok)->special_ids().eos, (*tok)->token_to_id("<｜end▁of▁sentence｜>"));
  EXPECT_TRUE((*tok)->special_ids().eos.has_value());
}

TEST(LoadTokenizer, UnsupportedTokenizerJsonFallsBackToTokenizerModel) {
  temp_dir dir;
  dir.write("tokenizer.json", R"({"model": {"vocab": {"a": 0}}, "pre_tokenizer":
                                  {"type": "UnicodeScripts"}})");
  dir.write("tokenizer.model", fixture_file("spm-bpe", "tokenizer.model"));
  auto tok = load_tokenizer(dir.path());
  ASSERT_TRUE(tok.has_value()) << tok.error();
  EXPECT_EQ((*tok)->kind(), "tokenizer.model (SentencePiece)");
  // A malformed tokenizer.json is an error even with a tokenizer.model beside it.
  dir.write("tokenizer.json", "{ not json");
  EXPECT_EQ(load_tokenizer(dir.path()).error().code(), errc::invalid_argument);
}

TEST(LoadTokenizer, MalformedJsonNamesTheProblem) {
  expect_error(load_json_text("{\"model\": "), errc::invalid_argument, "not valid JSON");
  expect_error(load_json_text("[1, 2]"), errc::invalid_argument, "JSON object");
  expect_error(load_json_text("{}"), errc::invalid_argument, "model is missing");
  expect_error(load_json_text(std::string(100000, '[') + std::string(100000, ']')),
               errc::invalid_argument, "nested deeper");
  expect_error(load_json_text(R"({"model": {"type": "BPE", "vocab": [], "merges": []}})"),
               errc::invalid_argument, "model.vocab");
  expect_error(load_json_text(R"({"model": {"type": "BPE", "vocab": {"a": -1}, "merges": []}})"),
               errc::invalid_argument, "model.vocab[\"a\"]");
  expect_error(load_json_text(R"({"model": {"type": "BPE", "vocab": {"a": "x"}, "merges": []}})"),
               errc::invalid_argument, "model.vocab[\"a\"]");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0, "b": 1}, "merges": ["a b c"]}})"),
               errc::invalid_argument, "model.merges[0]");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0, "b": 1}, "merges": [["a", "b"]]}})"),
               errc::invalid_argument, "merged token");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0, "b": 1}, "merges": [["a", 7]]}})"),
               errc::invalid_argument, "model.merges[0]");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0, "b": 0}, "merges": []}})"),
               errc::invalid_argument, "share id 0");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 100000}, "merges": []}})"),
               errc::invalid_argument, "sparse");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": 1}]})"),
               errc::invalid_argument, "added_tokens[0]");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}},
                   "added_tokens": [{"id": 1, "content": ""}]})"),
               errc::invalid_argument, "added_tokens[0].content");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "pre_tokenizer":
                   {"type": "Split", "pattern": {"Regex": "(unclosed"}}})"),
               errc::invalid_argument, "pre_tokenizer.pattern");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "pre_tokenizer":
                   {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways"}})"),
               errc::invalid_argument, "pre_tokenizer.behavior");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "decoder":
                   {"type": "Strip", "content": "ab", "start": 1, "stop": 0}})"),
               errc::invalid_argument, "decoder.content");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "pre_tokenizer":
                   {"type": "Metaspace", "prepend_scheme": "sometimes"}})"),
               errc::invalid_argument, "pre_tokenizer.prepend_scheme");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "post_processor":
                   {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}],
                    "special_tokens": {}}})"),
               errc::invalid_argument, "special_tokens[\"<s>\"]");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "post_processor":
                   {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>"}}],
                    "special_tokens": {"<s>": {"ids": [5]}}}})"),
               errc::invalid_argument, "token id 5");
}

TEST(LoadTokenizer, UnsupportedFeaturesAreRefusedByName) {
  expect_error(load_json_text(R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})"),
               errc::failed_precondition, "WordPiece");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "normalizer": {"type": "NFKC"}})"),
               errc::failed_precondition, "NFKC");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "pre_tokenizer":
                   {"type": "Whitespace"}})"),
               errc::failed_precondition, "Whitespace");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "decoder": {"type": "CTC"}})"),
               errc::failed_precondition, "CTC");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}}, "normalizer": {"type": "Replace",
                   "pattern": {"Regex": " +"}, "content": " "}})"),
               errc::failed_precondition, "Regex");
  expect_error(load_json_text(R"({"model": {"vocab": {"a": 0}, "dropout": 0.1}})"),
               errc::failed_precondition, "dropout");
  expect_error(
      load_json_text(R"({"model": {"vocab": {"a": 0}, "continuing_subword_prefix": "##"}})"),
      errc::failed_precondition, "continuing_subword_prefix");
}

TEST(LoadTokenizer, SizeLimitsGiveResourceExhausted) {
  const std::string text = fixture_file("llama3-bpe", "tokenizer.json");
  tokenizer_limits small;
  small.max_vocab = 100;
  expect_error(load_json_text(text, small), errc::resource_exhausted, "model.vocab");
  small = {};
  small.max_merges = 100;
  expect_error(load_json_text(text, small), errc::resource_exhausted, "model.merges");
  small = {};
  small.max_file_bytes = 1000;
  expect_error(load_json_text(text, small), errc::resource_exhausted, "tokenizer.json");
  small = {};
  small.max_added_tokens = 2;
  expect_error(load_json_text(text, small), errc::resource_exhausted, "added_tokens");
  json seq = json{{"type", "Sequence"}, {"normalizers", json::array()}};
  for (int i = 0; i < 8; ++i) {
    json inner = json{{"type", "Sequence"}, {"normalizers", json::array()}};
    for (int k = 0; k < 10; ++k) inner["normalizers"].push_back(json{{"type", "NFC"}});
    seq["normalizers"].push_back(inner);
  }
  json many = llama3_json();
  many["normalizer"] = seq;
  expect_error(load_json_text(many.dump()), errc::resource_exhausted, "normalizer has 80 steps");
  many = llama3_json();
  many["normalizer"] = json{
      {"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", std::string(1000, 'x')}};
  expect_error(load_json_text(many.dump()), errc::resource_exhausted, "normalizer.content");
  json j = llama3_json();
  j["model"]["vocab"][std::string(5000, 'x')] = 999999;
  expect_error(load_json_text(j.dump()), errc::resource_exhausted, "5000-byte token");
}

TEST(LoadTokenizer, MalformedConfigAndSentencePieceModel) {
  temp_dir dir;
  dir.write("tokenizer.json", fixture_file("llama3-bpe", "tokenizer.json"));
  dir.write("tokenizer_config.json", R"({"bos_token": 5})");
  auto tok = load_tokenizer(dir.path());
  ASSERT_FALSE(tok.has_value());
  expect_error(tok.error(), errc::invalid_argument, "bos_token");
  dir.write("tokenizer_config.json", R"({"eos_token": "<|no_such_token|>"})");
  expect_error(load_tokenizer(dir.path()).error(), errc::invalid_argument, "<|no_such_token|>");
  dir.write("tokenizer_config.json", R"({"add_bos_token": "yes"})");
  expect_error(load_tokenizer(dir.path()).error(), errc::invalid_argument, "add_bos_token");

  temp_dir spm;
  spm.write("tokenizer.model", "this is not a protobuf");
  expect_error(load_tokenizer(spm.path()).error(), errc::invalid_argument, "tokenizer.model");
  const std::string model = fixture_file("spm-bpe", "tokenizer.model");
  spm.write("tokenizer.model", model.substr(0, model.size() / 2));
  EXPECT_FALSE(load_tokenizer(spm.path()).has_value());
}

TEST(Tokenizer, BadInputGivesInvalidArgument) {
  for (const char* name : {"llama3-bpe", "spm-bpe"}) {
    auto tok = load_tokenizer(fixtures / name);
    ASSERT_TRUE(tok.has_value()) << tok.error();
    const auto& t = **tok;
    expect_error(t.encode("ok \xC3\x28 no", false).error(), errc::invalid_argument,
                 "byte offset 3");
    expect_error(t.decode(std::vector<std::int32_t>{1, -1}).error(), errc::invalid_argument, "-1");
    expect_error(t.decode(std::vector<std::int32_t>{t.vocab_size()}).error(),
                 errc::invalid_argument, "not in the vocabulary");
    EXPECT_EQ(t.id_to_token(-5).error().code(), errc::invalid_argument);
    detokenizer d(t);
    EXPECT_EQ(d.add(t.vocab_size() + 7).error().code(), errc::invalid_argument);
    EXPECT_TRUE(d.add(5).has_value());  // still usable after an error
  }
}

// Seeded mutations of a real tokenizer.json: each either loads or fails cleanly, and a loaded one
// encodes and decodes without crashing.
TEST(TokenizerFuzz, MutatedTokenizerJsonNeverCrashes) {
  const std::string original = fixture_file("llama3-bpe", "tokenizer.json");
  std::mt19937 rng(20261207);
  int loaded = 0;
  for (int round = 0; round < 60; ++round) {
    std::string text = original;
    const int edits = 1 + round % 8;
    for (int e = 0; e < edits; ++e) {
      std::uniform_int_distribution<std::size_t> pos(0, text.size() - 1);
      const std::size_t p = pos(rng);
      switch (rng() % 4) {
        case 0:
          text[p] = static_cast<char>(rng() & 0xFF);
          break;
        case 1:
          text.erase(p, 1 + rng() % 16);
          break;
        case 2:
          text = text.substr(0, p) + "[{\"\\u0000" + text.substr(p);
          break;
        default:
          text.resize(p);
          break;
      }
      if (text.empty()) text.assign(1, '{');
    }
    temp_dir dir;
    dir.write("tokenizer.json", text);
    auto tok = load_tokenizer(dir.path());
    if (!tok) {
      EXPECT_NE(tok.error().code(), errc::internal) << tok.error();
      continue;
    }
    ++loaded;
    auto ids = (*tok)->encode("Hello <|eot_id|> world 東京 👍🏽", true);
    if (ids) {
      EXPECT_TRUE((*tok)->decode(*ids).has_value());
    }
  }
  RecordProperty("loaded", loaded);
}

// Seeded structural mutations: well-formed JSON with wrong types, out-of-range ids, broken
// merges and random regexes in the places a real file has them.
TEST(TokenizerFuzz, StructurallyMutatedTokenizerJsonNeverCrashes) {
  const json original = llama3_json();
  std::mt19937 rng(5);
  const std::vector<json> odd_values = {
      json(),     json(-1),    json(2147483647), json("x"),         json::array(), json::object(),
      json(true), json(1e300), json("(?<"),      json("[\\p{Zz}]"), json("\\"),    json("(a*)*b")};
  const auto odd = [&] { return odd_values[rng() % odd_values.size()]; };
  int loaded = 0;
  for (int round = 0; round < 200; ++round) {
    json j = original;
    for (int e = 0; e < 1 + round % 3; ++e) {
      // An earlier edit may have replaced a parent with a scalar; that edit then does nothing.
      try {
        switch (rng() % 8) {
          case 0: {
            const char* keys[] = {"model",          "normalizer", "pre_tokenizer",
                                  "post_processor", "decoder",    "added_tokens"};
            j[keys[rng() % 6]] = odd();
            break;
          }
          case 1: {
            auto& vocab = j["model"]["vocab"];
            auto it = vocab.begin();
            std::advance(it, static_cast<std::ptrdiff_t>(rng() % vocab.size()));
            *it = odd();
            break;
          }
          case 2: {
            auto& merges = j["model"]["merges"];
            merges[rng() % merges.size()] = odd();
            break;
          }
          case 3:
            j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = odd();
            break;
          case 4: {
            auto& added = j["added_tokens"];
            added[rng() % added.size()][rng() % 2 == 0 ? "id" : "content"] = odd();
            break;
          }
          case 5:
            j["model"][rng() % 2 == 0 ? "ignore_merges" : "byte_fallback"] = odd();
            break;
          case 6:
            j["post_processor"]["processors"][1]["special_tokens"]["<|begin_of_text|>"]["ids"] =
                json::array({odd()});
            break;
          default:
            j["pre_tokenizer"]["pretokenizers"][1] = json{{"type", odd()}};
            break;
        }
      } catch (const json::exception&) {
      }
    }
    temp_dir dir;
    dir.write("tokenizer.json", j.dump());
    auto tok = load_tokenizer(dir.path());
    if (!tok) {
      EXPECT_NE(tok.error().code(), errc::internal) << tok.error();
      continue;
    }
    ++loaded;
    auto ids = (*tok)->encode("Hello <|eot_id|> world 東京 👍🏽 it's 12345", true);
    if (ids) {
      EXPECT_TRUE((*tok)->decode(*ids).has_value());
    }
  }
  EXPECT_GT(loaded, 0);
  EXPECT_LT(loaded, 200);
}

TEST(TokenizerFuzz, RandomSentencePieceBytesNeverCrash) {
  const std::string original = fixture_file("spm-bpe", "tokenizer.model");
  std::mt19937 rng(7);
  for (int round = 0; round < 40; ++round) {
    std::string bytes;
    if (round % 2 == 0) {
      bytes.resize(rng() % 4096);
      for (char& c : bytes) c = static_cast<char>(rng() & 0xFF);
    } else {
      bytes = original.substr(0, rng() % original.size());
    }
    temp_dir dir;
    dir.write("tokenizer.model", bytes);
    auto tok = load_tokenizer(dir.path());
    if (tok) {
      auto ids = (*tok)->encode("hello world", true);
      if (ids) {
        EXPECT_TRUE((*tok)->decode(*ids).has_value());
      }
    }
  }
}

// Random bytes, and random valid text from all planes: encoding never crashes, invalid UTF-8 is
// refused, and byte-level BPE gives the text back exactly.
TEST(TokenizerFuzz, RandomTextRoundTripsThroughByteLevelBpe) {
  auto llama = load_tokenizer(fixtures / "llama3-bpe");
  auto gpt2 = load_tokenizer(fixtures / "gpt2-bpe");
  auto spm = load_tokenizer(fixtures / "spm-bpe");
  ASSERT_TRUE(llama && gpt2 && spm);
  std::mt19937 rng(42);
  int valid = 0;
  for (int round = 0; round < 2000; ++round) {
    std::string s;
    const std::size_t n = rng() % 64;
    if (round % 2 == 0) {
      for (std::size_t i = 0; i < n; ++i) s.push_back(static_cast<char>(rng() & 0xFF));
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        char32_t cp = 0;
        switch (rng() % 4) {
          case 0:
            cp = static_cast<char32_t>(rng() % 0x80);
            break;
          case 1:
            cp = static_cast<char32_t>(0x80 + rng() % 0x780);
            break;
          case 2:
            cp = static_cast<char32_t>(0x800 + rng() % 0xF800);
            break;
          default:
            cp = static_cast<char32_t>(0x10000 + rng() % 0x100000);
            break;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) cp = 0xFFFD;
        append_code_point(cp, s);
      }
    }
    const bool is_valid = validate_utf8(s, "s").ok();
    valid += is_valid ? 1 : 0;
    for (const auto* tok : {llama->get(), gpt2->get(), spm->get()}) {
      auto ids = tok->encode(s, false);
      ASSERT_EQ(ids.has_value(), is_valid) << (ids ? "" : ids.error().to_string());
      if (!ids) continue;
      auto text = tok->decode(*ids);
      ASSERT_TRUE(text.has_value()) << text.error();
      if (tok != spm->get()) {
        EXPECT_EQ(*text, s) << "round " << round;
      }
    }
  }
  EXPECT_GT(valid, 1000);
}

}  // namespace
}  // namespace helix::text
