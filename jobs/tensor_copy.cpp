// Tensor copies shared by convert and sft (see tensor_copy.h).
#include "jobs/tensor_copy.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "io/transpose.h"

namespace dg {

void NonFiniteScan::add(const void* data, DType t, std::int64_t first, std::int64_t n) {
  const NonFinite b = find_non_finite(data, t, n);
  if (!b) return;
  if (!found) found.first = first + b.first, found.first_value = b.first_value;
  found.count += b.count;
}

Shape swap_last2(Shape s) {
  std::swap(s[s.size() - 1], s[s.size() - 2]);
  return s;
}

std::vector<int> spread_over_ranks(const std::vector<std::uint64_t>& bytes, int ranks) {
  std::vector<std::size_t> order(bytes.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return bytes[a] > bytes[b]; });
  std::vector<std::uint64_t> load(static_cast<std::size_t>(ranks), 0);
  std::vector<int> owner(bytes.size());
  for (std::size_t i : order) {
    const auto r = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    owner[i] = static_cast<int>(r);
    load[r] += bytes[i];
  }
  return owner;
}

DType checkpoint_dtype(const ShardedSafetensors& files, const std::string& hf) {
  const SafetensorsEntry& e = files.entry(hf);
  if (!e.type) fail_config("{}: tensor '{}' has dtype {}, which dgemma checkpoints cannot hold", files.path(), hf, e.dtype);
  return *e.type;
}

void copy_hf_tensor(const ShardedSafetensors& files, const std::string& hf, bool transposed, CheckpointWriter& writer,
                    const std::string& key, NonFiniteScan& scan) {
  const SafetensorsEntry& e = files.entry(hf);
  const DType t = checkpoint_dtype(files, hf);
  const std::span<const std::byte> src = files.bytes(hf);
  const std::size_t es = dtype_size(t);
  if (!transposed) {
    writer.add_pieces(key, e.shape, t, std::max<std::int64_t>(1, kPieceBytes / static_cast<std::int64_t>(es)),
                      [&](std::int64_t first, std::int64_t n, void* dst) {
                        const std::size_t at = static_cast<std::size_t>(first) * es, len = static_cast<std::size_t>(n) * es;
                        scan.add(src.data() + at, t, first, n);
                        std::memcpy(dst, src.data() + at, len);
                        files.release(hf, at, at + len);
                      });
    return;
  }
  // The checkpoint's [.., q, p] of the HF [.., p, q], in whole rows of p elements.
  const std::int64_t row = std::max<std::int64_t>(1, e.shape[e.shape.size() - 2]), mat = row * e.shape.back();
  const std::int64_t piece = std::max<std::int64_t>(1, kPieceBytes / static_cast<std::int64_t>(es) / row) * row;
  std::int64_t scanned = 0;  // source matrices checked for non-finite values so far
  writer.add_pieces(key, swap_last2(e.shape), t, piece, [&](std::int64_t first, std::int64_t n, void* dst) {
    for (; scanned * mat < first + n; ++scanned)  // each source matrix once, in HF order
      scan.add(src.data() + static_cast<std::size_t>(scanned * mat) * es, t, scanned * mat, mat);
    transpose_range(src.data(), e.shape, es, first, n, static_cast<std::byte*>(dst));
    const std::int64_t from = first / mat * mat, done = (first + n) / mat * mat;  // source matrices finished
    if (done > from) files.release(hf, static_cast<std::size_t>(from) * es, static_cast<std::size_t>(done) * es);
  });
  files.release(hf, 0, src.size());
}

}  // namespace dg
