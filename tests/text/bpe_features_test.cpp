// BPE and pre-tokenizer features the fixtures do not cover: byte fallback with its decoder,
// unknown tokens, added-token stripping and single_word, add_bos_token from the config, the other
// split behaviours, and the UTF-8 helpers the detokenizer relies on.
#include <algorithm>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/text/text_test_util.hpp"
#include "text/detokenizer.hpp"
#include "text/pre_tokenizer.hpp"
#include "text/tokenizer.hpp"
#include "text/utf8.hpp"

namespace helix::text {
namespace {

using json = nlohmann::json;
using testing::temp_dir;
const std::filesystem::path fixtures = std::filesystem::path(HELIX_FIXTURES_DIR) / "tokenizers";

// A Llama-2-like vocabulary: <unk>, <s>, </s>, 256 byte tokens, then a few pieces.
json byte_fallback_json() {
  json vocab = json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) vocab[fmt::format("<0x{:02X}>", b)] = 3 + b;
  vocab["a"] = 259;
  vocab["b"] = 260;
  vocab["ab"] = 261;
  vocab[" "] = 262;
  vocab[" ab"] = 263;
  return json{
      {"model",
       {{"type", "BPE"},
        {"unk_token", "<unk>"},
        {"byte_fallback", true},
        {"fuse_unk", true},
        {"vocab", vocab},
        {"merges", json::array({"a b", json::array({" ", "ab"})})}}},
      {"added_tokens", json::array({json{{"id", 1}, {"content", "<s>"}, {"special", true}},
                                    json{{"id", 2}, {"content", "</s>"}, {"special", true}}})},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders", json::array({json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}}})}}}};
}

std::vector<std::int32_t> encode(const tokenizer& t, std::string_view s, bool special = false) {
  auto ids = t.encode(s, special);
  EXPECT_TRUE(ids.has_value()) << ids.error().to_string();
  return ids ? *ids : std::vector<std::int32_t>{};
}

std::vector<std::string> stream(const tokenizer& t, const std::vector<std::int32_t>& ids) {
  detokenizer d(t);
  std::vector<std::string> chunks;
  for (const auto id : ids) chunks.push_back(d.add(id).value());
  chunks.push_back(d.flush().value());
  return chunks;
}

TEST(BpeFeatures, ByteFallbackEncodesUnknownCharactersAsBytes) {
  temp_dir dir;
  dir.write("tokenizer.json", byte_fallback_json().dump());
  dir.write("tokenizer_config.json", R"({"add_bos_token": true, "bos_token": "<s>",
                                         "eos_token": {"content": "</s>"}})");
  auto tok = load_tokenizer(dir.path());
  ASSERT_TRUE(tok.has_value()) << tok.error();
  const tokenizer& t = **tok;
  EXPECT_EQ(encode(t, " abab"), (std::vector<std::int32_t>{263, 261}));
  EXPECT_EQ(encode(t, "c"), (std::vector<std::int32_t>{3 + 'c'}));
  EXPECT_EQ(encode(t, "\xC3\xA9"), (std::vector<std::int32_t>{3 + 0xC3, 3 + 0xA9}));
  // add_bos_token from tokenizer_config.json; the config's EOS is an AddedToken object.
  EXPECT_EQ(encode(t, "a", true), (std::vector<std::int32_t>{1, 259}));
  EXPECT_EQ(t.special_ids().eos, 2);
  // ByteFallback decoding: a valid run is its text, an invalid one is U+FFFD per byte.
  const std::vector<std::int32_t> smile = {3 + 0xF0, 3 + 0x9F, 3 + 0x98, 3 + 0x80};
  EXPECT_EQ(t.decode(smile).value(), "\xF0\x9F\x98\x80");
  EXPECT_EQ(t.decode(std::vector<std::int32_t>{3 + 0xF0, 3 + 0x9F, 259}).value(),
            "\xEF\xBF\xBD\xEF\xBF\xBD"
            "a");
  EXPECT_EQ(t.decode(std::vector<std::int32_t>{1, 259, 2}, true).value(), "a");
  // Streaming holds a run of byte tokens until a piece follows (or the stream ends): a later
  // invalid byte would turn the whole run into U+FFFDs.
  EXPECT_EQ(stream(t, smile), (std::vector<std::string>{"", "", "", "", "\xF0\x9F\x98\x80"}));
  std::vector<std::int32_t> smile_a = smile;
  smile_a.push_back(259);
  EXPECT_EQ(stream(t, smile_a), (std::vector<std::string>{"", "", "", "",
                                                          "\xF0\x9F\x98\x80"
                                                          "a",
                                                          ""}));
  const std::vector<std::int32_t> tilde_bad = {3 + '~', 3 + 0x9F, 259};
  EXPECT_EQ(t.decode(tilde_bad).value(),
            "\xEF\xBF\xBD\xEF\xBF\xBD"
            "a");
  EXPECT_EQ(stream(t, tilde_bad), (std::vector<std::string>{"", "",
                                                            "\xEF\xBF\xBD\xEF\xBF\xBD"
                                                            "a",
                                                            ""}));
}

TEST(BpeFeatures, UnknownCharactersFuseIntoOneUnkToken) {
  json j = byte_fallback_json();
  j["model"]["byte_fallback"] = false;
  temp_dir dir;
  dir.write("tokenizer.json", j.dump());
  auto tok = load_tokenizer(dir.path());
  ASSERT_TRUE(tok.has_value()) << tok.error();
  EXPECT_EQ(encode(**tok, "xyzab"), (std::vector<std::int32_t>{0, 261}));
  j["model"]["fuse_unk"] = false;
  dir.write("tokenizer.json", j.dump());
  tok = load_tokenizer(dir.path());
  ASSERT_TRUE(tok.has_value());
  EXPECT_EQ(encode(**tok, "xyab"), (std::vector<std::int32_t>{0, 0, 261}));
}

TEST(BpeFeatures, AddedTokensStripAndMatchWholeWords) {
  json j =
      json::parse(read_file_bounded(fixtures / "llama3-bpe" / "tokenizer.json", 1u << 24).value());
  const std::int32_t next = static_cast<std::int32_t>(j["added_tokens"].back()["id"]) + 1;
  for (auto& a : j["added_tokens"]) {
    if (a["content"] == "<|eot_id|>") {
      a["lstrip"] = true;
      a["rstrip"] = true;
    }
  }
  j["added_tokens"].push_back(json{{"id", next},
                                   {"content", "cat"},
                                   {"special", false},
                                   {"single_word", true},
                                   {"normalized", false}});
  temp_dir dir;
  dir.write("tokenizer.json", j.dump());
  auto tok = load_tokenizer(dir.path());
  ASSERT_TRUE(tok.has_value()) << tok.error();
  const tokenizer& t = **tok;
  const std::int32_t eot = t.token_to_id("<|eot_id|>").value();
  const auto a = encode(t, "a");
  const auto b = encode(t, "b");
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(encode(t, "a  <|eot_id|> \n b"), (std::vector<std::int32_t>{a[0], eot, b[0]}));
  // single_word: "cat" alone is the added token, inside "concatenate" it is not.
  EXPECT_EQ(encode(t, "cat"), (std::vector<std::int32_t>{next}));
  const auto inside = encode(t, "concatenate");
  EXPECT_EQ(std::count(inside.begin(), inside.end(), next), 0);
}

TEST(PreTokenizer, SplitBehavioursDigitsAndLiteralPatterns) {
  const auto split_with = [](pre_tokenizer_step step, std::string_view text) {
    std::vector<pre_tokenizer_step> steps;
    steps.push_back(std::move(step));
    auto p = pre_tokenizer::create(std::move(steps));
    EXPECT_TRUE(p.has_value());
    return p->split(text).value();
  };
  using v = std::vector<std::string>;
  const auto dash = [] { return regex::compile("-", true).value(); };
  EXPECT_EQ(split_with(split_step{dash(), split_behavior::removed, false}, "a-b--c"),
            (v{"a", "b", "c"}));
  EXPECT_EQ(split_with(split_step{dash(), split_behavior::isolated, false}, "a-b"),
            (v{"a", "-", "b"}));
  EXPECT_EQ(split_with(split_step{dash(), split_behavior::merged_with_previous, false}, "a-b-"),
            (v{"a-", "b-"}));
  EXPECT_EQ(split_with(split_step{dash(), split_behavior::merged_with_next, false}, "a-b-c"),
            (v{"a", "-b", "-c"}));
  EXPECT_EQ(split_with(split_step{dash(), split_behavior::contiguous, false}, "a--b"),
            (v{"a", "--", "b"}));
  EXPECT_EQ(split_with(split_step{dash(), split_behavior::removed, true}, "a-b"), (v{"-"}));
  // A literal pattern is not a regex.
  EXPECT_EQ(
      split_with(split_step{regex::compile(".", true).value(), split_behavior::removed, false},
                 "a.b"),
      (v{"a", "b"}));
  EXPECT_EQ(split_with(digits_step{true}, "ab123c"), (v{"ab", "1", "2", "3", "c"}));
  EXPECT_EQ(split_with(digits_step{false}, "ab123c"), (v{"ab", "123", "c"}));
}

TEST(PreTokenizer, WhitespaceClassIsUnicodeWhiteSpaceWithoutMongolianVowelSeparator) {
  auto re = regex::compile(R"(\s+|[^\s\\]+|\\s)", false);
  ASSERT_TRUE(re.has_value()) << re.error();
  // U+3000 is White_Space; U+180E is not (PCRE2 alone would say it is).
  auto m = re->find_all(
      "a\xE3\x80\x80"
      "b\xE1\xA0\x8E"
      "c\\s");
  ASSERT_TRUE(m.has_value());
  using p = std::pair<std::size_t, std::size_t>;
  EXPECT_EQ(*m, (std::vector<p>{{0, 1}, {1, 4}, {4, 9}, {9, 11}}));
}

// The pre-tokenizer of DeepSeek-V3 as it ships: digit runs, CJK runs, then a pattern with
// escaped brackets and \p{P}/\p{S}/\p{M} classes, then ByteLevel without its regex.
TEST(PreTokenizer, DeepSeekV3SequenceCompilesAndSplits) {
  std::vector<pre_tokenizer_step> steps;
  for (
      const char* pattern :
      {R"(\p{N}{1,3})", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
       R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}) {
    auto re = regex::compile(pattern, false);
    ASSERT_TRUE(re.has_value()) << re.error();
    steps.emplace_back(split_step{std::move(re).value(), split_behavior::isolated, false});
  }
  steps.emplace_back(byte_level_step{false, false});
  auto p = pre_tokenizer::create(std::move(steps));
  ASSERT_TRUE(p.has_value());
  auto words = p->split("DeepSeek-V3 has 671B params\n\u6771\u4eac\u30bf\u30ef\u30fc!");
  ASSERT_TRUE(words.has_value()) << words.error();
  using v = std::vector<std::string>;
  // Byte-level mapped: a space is "Ġ" (U+0120), a newline "Ċ" (U+010A).
  EXPECT_EQ(*words, (v{"DeepSeek", "-V", "3", "Ġhas", "Ġ", "671", "B", "Ġparams", "Ċ",
                       "æĿ±äº¬ãĤ¿ãĥ¯ãĥ¼", "!"}));
}

TEST(BpeFeatures, LongWordsAndWhitespaceRunsEncodeInReasonableTime) {
  auto tok = load_tokenizer(fixtures / "llama3-bpe");
  ASSERT_TRUE(tok.has_value());
  for (const std::string& s : {std::string(200000, 'a'), std::string(200000, ' '),
                               std::string(100000, '7'), std::string(50000, '\n')}) {
    auto ids = (*tok)->encode(s, false);
    ASSERT_TRUE(ids.has_value()) << ids.error();
    EXPECT_EQ((*tok)->decode(*ids).value(), s);
  }
}

TEST(Utf8, LossyConversionReplacesMaximalSubparts) {
  EXPECT_EQ(utf8_lossy("a\xF0\x9F\x98"
                       "b"),
            "a\xEF\xBF\xBD"
            "b");                                                 // one U+FFFD for the cut emoji
  EXPECT_EQ(utf8_lossy("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong: two
  EXPECT_EQ(utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  EXPECT_EQ(utf8_lossy("ok \xE2\x82\xAC"), "ok \xE2\x82\xAC");
  EXPECT_EQ(incomplete_utf8_tail("ab\xF0\x9F\x98"), 3u);
  EXPECT_EQ(incomplete_utf8_tail("ab\xE2\x82"), 2u);
  EXPECT_EQ(incomplete_utf8_tail("ab\xE2"), 1u);
  EXPECT_EQ(incomplete_utf8_tail("ab\xE2\x82\xAC"), 0u);
  EXPECT_EQ(incomplete_utf8_tail("ab\x82"), 0u);  // a stray continuation can never complete
  EXPECT_EQ(incomplete_utf8_tail("\xC0"), 0u);    // never a valid lead
  EXPECT_EQ(nfc("e\xCC\x81").value(), "\xC3\xA9");
  EXPECT_EQ(validate_utf8("\xF4\x90\x80\x80", "x").code(), errc::invalid_argument);
}

}  // namespace
}  // namespace helix::text
