#include "model/safetensors.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <span>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace helix::model {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// A fresh directory per test, removed afterwards.
class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static std::atomic<int> counter{0};
    dir_ = fs::temp_directory_path() /
           ("helix_st_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
            std::to_string(std::random_device{}()));
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  [[nodiscard]] std::string path(const std::string& name) const { return (dir_ / name).string(); }

  // A file with an explicit header length (so that lies about it can be tested).
  std::string write_raw(const std::string& header, std::size_t data_bytes,
                        std::uint64_t header_len_override = UINT64_MAX) {
    const std::string p = path("raw.safetensors");
    std::uint64_t len = header_len_override == UINT64_MAX ? header.size() : header_len_override;
    std::string bytes(8, '\0');
    for (int i = 0; i < 8; ++i)
      bytes[static_cast<std::size_t>(i)] = static_cast<char>((len >> (8 * i)) & 0xff);
    bytes += header;
    bytes.append(data_bytes, '\x11');
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }

  // A file whose header is `header` followed by `data_bytes` bytes of data; expects an
  // invalid_argument whose message names the file and contains every `needles` substring.
  void expect_invalid(const std::string& header, std::size_t data_bytes,
                      const std::vector<std::string>& needles) {
    const std::string p = write_raw(header, data_bytes);
    auto f = safetensors_file::open(p);
    ASSERT_FALSE(f.has_value()) << header;
    EXPECT_EQ(f.error().code(), errc::invalid_argument) << f.error().to_string();
    EXPECT_THAT(f.error().message(), HasSubstr(p));
    for (const std::string& n : needles) EXPECT_THAT(f.error().message(), HasSubstr(n)) << header;
  }

  fs::path dir_;
};

std::vector<char> read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

TEST_F(SafetensorsTest, RoundTripAllDtypes) {
  std::vector<float> a(6);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = 0.1f * static_cast<float>(i) - 0.25f;
  std::vector<bf16_t> b(5);  // odd count: the next tensor would be misaligned without reordering
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = to_bf16(1.5f * static_cast<float>(i) - 3.0f);
  std::vector<f16_t> h(3);
  for (std::size_t i = 0; i < h.size(); ++i) h[i] = to_f16(0.5f + static_cast<float>(i));
  const float scalar = 42.0f;
  const std::vector<safetensors_tensor> in = {
      {"z.f32", dtype::f32, {2, 3}, a.data()}, {"a.bf16", dtype::bf16, {5}, b.data()},
      {"m.f16", dtype::f16, {1, 3}, h.data()}, {"scalar", dtype::f32, {}, &scalar},
      {"empty", dtype::f32, {0, 4}, nullptr},
  };
  const std::string p = path("t.safetensors");
  ASSERT_TRUE(write_safetensors(p, in).ok());
  // Only the file itself: the temporary was renamed.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);

  const std::vector<char> raw = read_file(p);
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, raw.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  const std::string header(raw.data() + 8, header_len);
  EXPECT_THAT(header, HasSubstr("\"__metadata__\":{\"format\":\"pt\"}"));
  EXPECT_LT(header.find("\"a.bf16\""), header.find("\"z.f32\""));  // sorted names

  auto f = safetensors_file::open(p);
  ASSERT_TRUE(f.has_value()) << f.error().to_string();
  ASSERT_EQ(f->entries().size(), 5u);
  EXPECT_EQ(f->entries()[0].name, "a.bf16");
  EXPECT_EQ(f->metadata().at("format"), "pt");
  for (const safetensors_entry& e : f->entries()) {
    EXPECT_EQ(e.data_offset % safetensors_dtype_bytes(e.dtype_name), 0u) << e.name;
  }
  const safetensors_entry* ez = f->find("z.f32");
  ASSERT_NE(ez, nullptr);
  EXPECT_EQ(ez->dtype_name, "F32");
  EXPECT_EQ(ez->shape, (std::vector<std::int64_t>{2, 3}));
  EXPECT_EQ(std::memcmp(f->bytes(*ez).data(), a.data(), 24), 0);
  EXPECT_EQ(f->find("scalar")->numel(), 1);
  EXPECT_EQ(f->find("empty")->data_bytes, 0u);
  EXPECT_EQ(f->find("missing"), nullptr);

  tensor tf(dtype::f32, {2, 3});
  ASSERT_TRUE(f->read_into("z.f32", tf).ok());
  EXPECT_EQ(std::memcmp(tf.data(), a.data(), 24), 0);
  tensor tb(dtype::bf16, {5});
  ASSERT_TRUE(f->read_into("a.bf16", tb).ok());
  EXPECT_EQ(std::memcmp(tb.data(), b.data(), 10), 0);
  tensor th(dtype::f16, {3});
  ASSERT_TRUE(f->read_into("m.f16", th).ok());
  EXPECT_EQ(std::memcmp(th.data(), h.data(), 6), 0);

  // Conversions: widening is exact, narrowing rounds to nearest even.
  tensor b_as_f32(dtype::f32, {5});
  ASSERT_TRUE(f->read_into("a.bf16", b_as_f32).ok());
  for (std::size_t i = 0; i < b.size(); ++i) EXPECT_EQ(b_as_f32.as<float>()[i], to_f32(b[i]));
  tensor h_as_f32(dtype::f32, {3});
  ASSERT_TRUE(f->read_into("m.f16", h_as_f32).ok());
  for (std::size_t i = 0; i < h.size(); ++i) EXPECT_EQ(h_as_f32.as<float>()[i], to_f32(h[i]));
  tensor a_as_bf16(dtype::bf16, {6});
  ASSERT_TRUE(f->read_into("z.f32", a_as_bf16).ok());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a_as_bf16.as<bf16_t>()[i].bits, to_bf16(a[i]).bits);
  }

  tensor wrong(dtype::f32, {7});
  const status s = f->read_into("z.f32", wrong);
  EXPECT_EQ(s.code(), errc::invalid_argument);
  EXPECT_THAT(s.message(), HasSubstr("z.f32"));
  EXPECT_EQ(f->read_into("nope", wrong).code(), errc::not_found);

  // Moving keeps the mapping valid.
  safetensors_file moved = std::move(*f);
  EXPECT_EQ(std::memcmp(moved.bytes(*moved.find("z.f32")).data(), a.data(), 24), 0);
}

TEST_F(SafetensorsTest, OverwritesExistingFileAtomically) {
  const float one = 1.0f, two = 2.0f;
  const std::string p = path("t.safetensors");
  ASSERT_TRUE(
      write_safetensors(p, std::vector<safetensors_tensor>{{"x", dtype::f32, {1}, &one}}).ok());
  ASSERT_TRUE(
      write_safetensors(p, std::vector<safetensors_tensor>{{"y", dtype::f32, {1}, &two}}).ok());
  auto f = safetensors_file::open(p);
  ASSERT_TRUE(f.has_value());
  EXPECT_EQ(f->find("x"), nullptr);
  ASSERT_NE(f->find("y"), nullptr);
}

TEST_F(SafetensorsTest, WriterRejectsBadInput) {
  const float v = 1.0f;
  const std::vector<safetensors_tensor> dup = {{"x", dtype::f32, {1}, &v},
                                               {"x", dtype::f32, {1}, &v}};
  status s = write_safetensors(path("d.safetensors"), dup);
  EXPECT_EQ(s.code(), errc::invalid_argument);
  EXPECT_THAT(s.message(), HasSubstr("duplicate tensor name 'x'"));
  s = write_safetensors(path("n.safetensors"),
                        std::vector<safetensors_tensor>{{"x", dtype::f32, {-1}, &v}});
  EXPECT_EQ(s.code(), errc::invalid_argument);
  s = write_safetensors(path("p.safetensors"),
                        std::vector<safetensors_tensor>{{"x", dtype::f32, {2}, nullptr}});
  EXPECT_EQ(s.code(), errc::invalid_argument);
  s = write_safetensors(path("no/such/dir/x.safetensors"),
                        std::vector<safetensors_tensor>{{"x", dtype::f32, {1}, &v}});
  EXPECT_EQ(s.code(), errc::internal);
  EXPECT_THAT(s.message(), HasSubstr("no/such/dir"));
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  auto f = safetensors_file::open(path("absent.safetensors"));
  ASSERT_FALSE(f.has_value());
  EXPECT_EQ(f.error().code(), errc::not_found);
  EXPECT_THAT(f.error().message(), HasSubstr("absent.safetensors"));
}

TEST_F(SafetensorsTest, DirectoryIsRejected) {
  auto f = safetensors_file::open(dir_.string());
  ASSERT_FALSE(f.has_value());
  EXPECT_EQ(f.error().code(), errc::invalid_argument);
  EXPECT_THAT(f.error().message(), HasSubstr("not a regular file"));
}

TEST_F(SafetensorsTest, FileShorterThanEightBytes) {
  const std::string p = path("short.safetensors");
  std::ofstream(p, std::ios::binary) << "abc";
  auto f = safetensors_file::open(p);
  ASSERT_FALSE(f.has_value());
  EXPECT_EQ(f.error().code(), errc::invalid_argument);
  EXPECT_THAT(f.error().message(), HasSubstr("shorter than the 8-byte header length"));
  EXPECT_THAT(f.error().message(), HasSubstr(p));
}

TEST_F(SafetensorsTest, HeaderLengthBeyondFile) {
  const std::string p = write_raw("{}", 0, 1000);
  auto f = safetensors_file::open(p);
  ASSERT_FALSE(f.has_value());
  EXPECT_EQ(f.error().code(), errc::invalid_argument);
  EXPECT_THAT(f.error().message(), HasSubstr("header length 1000 exceeds the file size"));
  // A huge length must not overflow the check.
  const std::string q = write_raw("{}", 0, UINT64_MAX - 3);
  auto g = safetensors_file::open(q);
  ASSERT_FALSE(g.has_value());
  EXPECT_THAT(g.error().message(), HasSubstr("exceeds the file size"));
}

TEST_F(SafetensorsTest, EmptyHeaderObjectIsAValidEmptyFile) {
  auto f = safetensors_file::open(write_raw("{}      ", 0));
  ASSERT_TRUE(f.has_value()) << f.error().to_string();
  EXPECT_TRUE(f->entries().empty());
}

TEST_F(SafetensorsTest, HeaderNotJson) {
  expect_invalid("{\"a\": [1, 2", 0, {"not valid JSON"});
  expect_invalid("", 0, {"not valid JSON"});
  expect_invalid("\xff\xfe{}", 0, {"not valid JSON"});
}

TEST_F(SafetensorsTest, HeaderNotObject) {
  expect_invalid("[1, 2, 3]", 0, {"header is a JSON array, not an object"});
  expect_invalid("\"x\"", 0, {"not an object"});
}

TEST_F(SafetensorsTest, EntryNotObject) {
  expect_invalid(R"({"w": [1, 2]})", 0, {"tensor 'w'", "entry is a JSON array"});
}

TEST_F(SafetensorsTest, MissingFields) {
  expect_invalid(R"({"w": {"shape": [2], "data_offsets": [0, 8]}})", 8,
                 {"tensor 'w'", "missing \"dtype\""});
  expect_invalid(R"({"w": {"dtype": "F32", "data_offsets": [0, 8]}})", 8,
                 {"tensor 'w'", "missing \"shape\""});
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [2]}})", 8,
                 {"tensor 'w'", "missing \"data_offsets\""});
}

TEST_F(SafetensorsTest, WrongJsonTypes) {
  expect_invalid(R"({"w": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}})", 8,
                 {"tensor 'w'", "\"dtype\" is a JSON integer, not a string"});
  expect_invalid(R"({"w": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}})", 8,
                 {"tensor 'w'", "\"shape\" is a JSON string, not an array"});
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": "0-8"}})", 8,
                 {"tensor 'w'", "\"data_offsets\" must be an array [begin, end]"});
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4, 8]}})", 8,
                 {"tensor 'w'", "\"data_offsets\" must be an array [begin, end]"});
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8.0]}})", 8,
                 {"tensor 'w'", "are not non-negative integers"});
  expect_invalid(
      R"({"__metadata__": [1], "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 8,
      {"__metadata__ is a JSON array"});
}

TEST_F(SafetensorsTest, BadShapes) {
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}})", 8,
                 {"tensor 'w'", "shape[0] = -2 is not a non-negative integer"});
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [1, 2.5], "data_offsets": [0, 8]}})", 8,
                 {"tensor 'w'", "shape[1] = 2.5"});
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [1, "2"], "data_offsets": [0, 8]}})", 8,
                 {"tensor 'w'", "shape[1] = \"2\""});
  // numel * 4 overflows 64 bits: must be a size mismatch, not a wrap-around that matches.
  expect_invalid(
      R"({"w": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})", 0,
      {"tensor 'w'", "byte size 0 != numel"});
}

TEST_F(SafetensorsTest, BadOffsets) {
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}})", 8,
                 {"tensor 'w'", "begin is after end"});
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}})", 8,
                 {"tensor 'w'", "not non-negative integers"});
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 8,
                 {"tensor 'w'", "end beyond the data section (8 bytes"});
}

TEST_F(SafetensorsTest, ByteSizeMismatch) {
  expect_invalid(R"({"w": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 8]}})", 16,
                 {"tensor 'w'", "byte size 8 != numel of shape [2, 3] * 2 bytes (BF16)"});
}

TEST_F(SafetensorsTest, OverlappingTensors) {
  expect_invalid(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
      16, {"'a' [0, 8)", "'b' [4, 12)", "overlap"});
}

// Regression: the writer pads the header with spaces; a length one byte short kept the header
// valid JSON and moved the data section one byte earlier, so every tensor was read shifted by a
// byte and the file "loaded fine". The exact-coverage rule sees the extra byte.
TEST_F(SafetensorsTest, HeaderLengthOneByteShortIsRefused) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}   )";
  ASSERT_TRUE(safetensors_file::open(write_raw(header, 8)).has_value());
  const std::string p = write_raw(header, 8, header.size() - 1);
  auto f = safetensors_file::open(p);
  ASSERT_FALSE(f.has_value());
  EXPECT_EQ(f.error().code(), errc::invalid_argument);
  EXPECT_THAT(f.error().message(), HasSubstr(p));
  EXPECT_THAT(f.error().message(), HasSubstr("1 trailing bytes"));
  EXPECT_THAT(f.error().message(), HasSubstr("'a'"));
  EXPECT_THAT(f.error().message(), HasSubstr("header length"));
  // One byte long swallows the first data byte: no longer JSON (and the data would be short).
  auto g = safetensors_file::open(write_raw(header, 8, header.size() + 1));
  ASSERT_FALSE(g.has_value());
  EXPECT_EQ(g.error().code(), errc::invalid_argument);

  // The same with a file from our writer, whatever its padding.
  const float v[3] = {1.0f, 2.0f, 3.0f};
  const std::string q = path("w.safetensors");
  ASSERT_TRUE(
      write_safetensors(q, std::vector<safetensors_tensor>{{"x", dtype::f32, {3}, v}}).ok());
  std::vector<char> bytes = read_file(q);
  bytes[0] = static_cast<char>(bytes[0] - 1);  // header lengths are small: no borrow
  std::ofstream(q, std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  auto h = safetensors_file::open(q);
  ASSERT_FALSE(h.has_value());
  EXPECT_EQ(h.error().code(), errc::invalid_argument);
}

TEST_F(SafetensorsTest, TrailingBytesAreRefused) {
  expect_invalid(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 12,
                 {"4 trailing bytes", "data section is 12 bytes", "'a'", "ends at 8"});
  // No tensor at all, but data.
  expect_invalid("{}", 3, {"3 trailing bytes", "the header lists no tensor"});
  expect_invalid(R"({"__metadata__": {"format": "pt"}})", 1, {"1 trailing bytes"});
}

TEST_F(SafetensorsTest, HoleBetweenTensorsIsRefused) {
  expect_invalid(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [12, 20]}})",
      20,
      {"hole between tensors 'a' [0, 8) and 'b' [12, 20)", "bytes [8, 12) belong to no tensor"});
  // A gap before the first tensor is a hole too.
  expect_invalid(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})", 12,
                 {"tensor 'a' [4, 12)", "does not begin at 0", "bytes [0, 4)"});
  // An empty tensor placed past the end of the others leaves a hole as well.
  expect_invalid(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "e": {"dtype": "F32", "shape": [0], "data_offsets": [12, 12]}})",
      12, {"hole between tensors 'a' [0, 8) and 'e' [12, 12)"});
}

TEST_F(SafetensorsTest, OverlappingTensorsAreRefused) {
  expect_invalid(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "b": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
      8, {"'a' [0, 8)", "'b' [0, 8)", "overlap"});
  // An empty tensor inside another one was skipped by the old overlap check.
  expect_invalid(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "e": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
      8, {"'a' [0, 8)", "'e' [4, 4)", "overlap"});
}

TEST_F(SafetensorsTest, EmptyTensorsAtTheBoundariesAreValid) {
  const std::string p = write_raw(
      R"({"e0": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]},
          "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "e1": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [8, 8]},
          "b": {"dtype": "BF16", "shape": [2], "data_offsets": [8, 12]},
          "e2": {"dtype": "I64", "shape": [0], "data_offsets": [12, 12]}})",
      12);
  auto f = safetensors_file::open(p);
  ASSERT_TRUE(f.has_value()) << f.error().to_string();
  EXPECT_EQ(f->entries().size(), 5u);
}

TEST_F(SafetensorsTest, UnknownKeyInTensorEntryIsRefused) {
  expect_invalid(R"({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "strides": [1]}})",
                 8, {"tensor 'w'", "unknown key 'strides'"});
}

TEST_F(SafetensorsTest, NonStringMetadataIsRefused) {
  expect_invalid(
      R"({"__metadata__": {"format": "pt", "step": 3},
          "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})",
      8, {"__metadata__ value of 'step' is a JSON integer, not a string"});
  // null means absent, as in the reference.
  auto f = safetensors_file::open(write_raw(
      R"({"__metadata__": null, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})", 8));
  ASSERT_TRUE(f.has_value()) << f.error().to_string();
  EXPECT_TRUE(f->metadata().empty());
}

TEST_F(SafetensorsTest, HeaderAboveTheReferenceLimitIsRefused) {
  // A sparse file just large enough that the length fits in it: the limit, not the file size,
  // must refuse it, before any of it is parsed.
  const std::uint64_t len = 100'000'001;
  const std::string p = write_raw("{}", 0, len);
  fs::resize_file(p, 8 + len);
  auto f = safetensors_file::open(p);
  ASSERT_FALSE(f.has_value());
  EXPECT_EQ(f.error().code(), errc::invalid_argument);
  EXPECT_THAT(f.error().message(), HasSubstr("header length 100000001 exceeds the 100000000-byte"));
}

TEST_F(SafetensorsTest, ParseInMemoryAgreesWithOpen) {
  const float a[4] = {1, 2, 3, 4};
  const std::string p = path("m.safetensors");
  ASSERT_TRUE(write_safetensors(p, std::vector<safetensors_tensor>{{"a", dtype::f32, {2, 2}, a},
                                                                   {"b", dtype::f32, {1}, a}})
                  .ok());
  const std::vector<char> raw = read_file(p);
  auto h = parse_safetensors(std::as_bytes(std::span(raw)), "in-memory");
  ASSERT_TRUE(h.has_value()) << h.error().to_string();
  auto f = safetensors_file::open(p);
  ASSERT_TRUE(f.has_value());
  ASSERT_EQ(h->entries.size(), f->entries().size());
  for (std::size_t i = 0; i < h->entries.size(); ++i) {
    EXPECT_EQ(h->entries[i].name, f->entries()[i].name);
    EXPECT_EQ(h->entries[i].data_offset, f->entries()[i].data_offset);
    EXPECT_EQ(h->entries[i].data_bytes, f->entries()[i].data_bytes);
  }
  EXPECT_EQ(h->metadata, f->metadata());
  EXPECT_EQ(h->data_start + 20, raw.size());
  auto bad = parse_safetensors(std::as_bytes(std::span(raw).first(raw.size() - 1)), "in-memory");
  ASSERT_FALSE(bad.has_value());
  EXPECT_THAT(bad.error().message(), HasSubstr("safetensors 'in-memory'"));
}

TEST_F(SafetensorsTest, FifoIsRefusedWithoutBlocking) {
  const std::string p = path("fifo.safetensors");
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0);
  auto f = safetensors_file::open(p);  // opening a FIFO for reading blocks without O_NONBLOCK
  ASSERT_FALSE(f.has_value());
  EXPECT_THAT(f.error().message(), HasSubstr("not a regular file"));
}

TEST_F(SafetensorsTest, DuplicateNames) {
  expect_invalid(
      R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
          "a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
      16, {"duplicate tensor name 'a'"});
  expect_invalid(R"({"a": {"dtype": "F32", "dtype": "F16", "shape": [2], "data_offsets": [0, 8]}})",
                 8, {"duplicate key 'dtype'"});
}

TEST_F(SafetensorsTest, UnknownDtype) {
  expect_invalid(R"({"w": {"dtype": "F12", "shape": [2], "data_offsets": [0, 8]}})", 8,
                 {"tensor 'w'", "unknown dtype \"F12\""});
}

TEST_F(SafetensorsTest, Fp8OpensButCannotBeRead) {
  const std::string p = write_raw(
      R"({"model.layers.0.mlp.down_proj.weight":
            {"dtype": "F8_E4M3", "shape": [2, 4], "data_offsets": [0, 8]},
          "pos": {"dtype": "I64", "shape": [1], "data_offsets": [8, 16]}})",
      16);
  auto f = safetensors_file::open(p);
  ASSERT_TRUE(f.has_value()) << f.error().to_string();
  EXPECT_FALSE(f->find("pos")->type.has_value());
  tensor t(dtype::f32, {2, 4});
  status s = f->read_into("model.layers.0.mlp.down_proj.weight", t);
  EXPECT_EQ(s.code(), errc::invalid_argument);
  EXPECT_THAT(s.message(),
              HasSubstr("tensor model.layers.0.mlp.down_proj.weight has dtype F8_E4M3, which "
                        "needs its block scales"));
  tensor t1(dtype::f32, {1});
  s = f->read_into("pos", t1);
  EXPECT_EQ(s.code(), errc::invalid_argument);
  EXPECT_THAT(s.message(), HasSubstr("tensor pos has dtype I64"));
}

// Every prefix of a valid file, and random byte flips in its header, must give a status (the
// ASan build checks that nothing reads out of bounds).
TEST_F(SafetensorsTest, TruncatedAndCorruptedFilesNeverCrash) {
  std::vector<float> a(16, 1.0f);
  std::vector<bf16_t> b(7, to_bf16(2.0f));
  const std::string p = path("good.safetensors");
  ASSERT_TRUE(
      write_safetensors(p, std::vector<safetensors_tensor>{{"a", dtype::f32, {4, 4}, a.data()},
                                                           {"b", dtype::bf16, {7}, b.data()}})
          .ok());
  const std::vector<char> good = read_file(p);
  const std::string q = path("bad.safetensors");
  int ok_count = 0;
  for (std::size_t n = 0; n < good.size(); ++n) {
    std::ofstream(q, std::ios::binary | std::ios::trunc)
        .write(good.data(), static_cast<std::streamsize>(n));
    auto f = safetensors_file::open(q);
    if (f.has_value())
      ++ok_count;
    else
      EXPECT_EQ(f.error().code(), errc::invalid_argument) << n;
  }
  EXPECT_EQ(ok_count, 0);  // the data section is needed in full
  std::mt19937 rng(1234);
  std::uint64_t header_len = 0;
  std::memcpy(&header_len, good.data(), 8);
  for (int trial = 0; trial < 500; ++trial) {
    std::vector<char> bad = good;
    for (int k = 0; k < 3; ++k) {
      const std::size_t pos = 8 + rng() % header_len;
      bad[pos] = static_cast<char>(rng() % 256);
    }
    std::ofstream(q, std::ios::binary | std::ios::trunc)
        .write(bad.data(), static_cast<std::streamsize>(bad.size()));
    auto f = safetensors_file::open(q);
    if (f.has_value()) {
      for (const safetensors_entry& e : f->entries()) {
        EXPECT_LE(e.data_offset + e.data_bytes, bad.size());
        if (e.type) {
          tensor t(*e.type, {e.numel()});
          EXPECT_TRUE(f->read_into(e.name, t).ok());
        }
      }
    }
  }
}

}  // namespace
}  // namespace helix::model
