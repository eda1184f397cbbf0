// Token embedding and the self-conditioning soft embedding (spec/model.md §4.1, §4.2, §8.3, §8.11;
// training.md §1.4, §5.1).
//
// Scale: emb(ids) = E[ids] · embed_scale, where the reference keeps sqrt(H) in an fp32 buffer and casts
// it to the WEIGHT dtype before multiplying. embed_scale(H, dtype) reproduces that cast; the caller
// passes embed_table.dtype(): on the CPU backend (fp32 weights) the scale is fp32(√H) (√2816 → 53.06600,
// as HF run in fp32 and the fp32 parity fixtures), on the CUDA backend (bf16 weights) it is bf16(√H) = 53.0
// for the 26B (5.65625 for the tiny H = 32). The soft embedding is multiplied by the same value.
//
// Soft embedding (decoder input with self-conditioning): soft = (softmax(sc_logits) @ E) · embed_scale,
// the softmax over the vocabulary, in fp32, of the given logits as they are: there is no temperature
// inside the model (during generate the logits passed in are already temperature-scaled). It is computed
// in vocabulary chunks: [T, chunk] probabilities at a time, never [T, V]. The per-example self-
// conditioning coin (training) is the caller's: zero the rows of `soft` (and of d_soft) of examples
// whose coin is off.
//
// Gradients: in training the self-conditioning logits are pass-1 outputs computed under no-grad and
// DETACHED (training.md §1.4, §5.1), so only the embedding table gets a gradient through the soft
// embedding; soft_embedding_backward still offers d_logits (nullptr skips it) for completeness and tests.
#pragma once
#include <vector>

#include "layers/tensor.h"

namespace dg {

// sqrt(hidden) rounded to fp32 and then to the weight dtype (F32, BF16 or F16), as the reference's buffer cast.
float embed_scale(std::int64_t hidden, DType weight_dtype);

// ids: i32, any shape [...] (values in [0, V)); table: [V, H]; out: [..., H] = table[ids] · scale.
// An id outside the vocabulary throws dg::Error naming the id and its position.
void embedding(const Tensor& ids, const Tensor& table, float scale, Tensor& out);
// d_table ([V, H]) += scale · d_out[t] at row ids[t], scattered in token order (deterministic).
void embedding_backward(const Tensor& ids, const Tensor& d_out, float scale, Tensor& d_table);

inline constexpr std::int64_t kSoftEmbeddingVocabChunk = 8192;

// logits: [..., V] (the self-conditioning logits, f32 on the CPU); table: [V, H];
// soft: [..., H] = (softmax(logits) @ table) · scale; lse: logits.shape[:-1], receives the row
// log-sum-exp in fp32 (the softmax statistics the backward needs; the backward's P = exp(logit − lse)
// inherits its rounding, <= 2e-6 relative). vocab_chunk > 0 need not divide V; the CPU op allocates
// [rows, min(vocab_chunk, V)] f32 of scratch.
void soft_embedding(const Tensor& logits, const Tensor& table, float scale, Tensor& soft, Tensor& lse,
                    std::int64_t vocab_chunk = kSoftEmbeddingVocabChunk);
// d_soft: [..., H]; soft and lse are the forward's outputs. With P = softmax(logits):
//   d_table  += scale · Pᵀ @ d_soft                                (accumulated)
//   d_logits  = P ⊙ (dP − Σ_v P·dP),  dP = scale · d_soft @ tableᵀ  (written; nullptr skips it)
// where Σ_v P·dP = Σ_h d_soft · soft per row, so no extra pass over the vocabulary is needed.
void soft_embedding_backward(const Tensor& d_soft, const Tensor& logits, const Tensor& table, float scale,
                             const Tensor& soft, const Tensor& lse, Tensor* d_logits, Tensor& d_table,
                             std::int64_t vocab_chunk = kSoftEmbeddingVocabChunk);

namespace cpu {
// fp32 implementations; arguments already validated by the dispatchers above.
void embedding(const Tensor& ids, const Tensor& table, float scale, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& d_out, float scale, Tensor& d_table);
void soft_embedding(const Tensor& logits, const Tensor& table, float scale, Tensor& soft, Tensor& lse,
                    std::int64_t vocab_chunk);
void soft_embedding_backward(const Tensor& d_soft, const Tensor& logits, const Tensor& table, float scale,
                             const Tensor& soft, const Tensor& lse, Tensor* d_logits, Tensor& d_table,
                             std::int64_t vocab_chunk);
}  // namespace cpu

namespace cuda {
// Device implementations (layers/cuda/embedding.cpp); arguments already validated by the dispatchers.
// Every tensor on the device; ids i32; tables, outputs and gradients bf16 or f32; lse f32.
//  - embedding: out = fp32(table[id]) · scale rounded to out's dtype. The ids are copied to the host and
//    checked first (one synchronising copy), so a bad id throws the CPU op's error.
//  - embedding_backward: deterministic without float atomics: the ids are checked and sorted on the
//    host (stable, so each row's tokens keep their order); one thread per (distinct id, column) adds
//    scale · d_out[t] for that id's tokens in token order, in fp32 starting from d_table's value, as
//    the CPU loop does (bit-identical for f32 d_table).
//  - soft_embedding(_backward): fp32 log-sum-exp per row (logits bf16 or f32), then per vocabulary
//    chunk the probabilities exp(logit - lse) in the table's dtype (bf16 on the production path, as the
//    reference casts them) and cuBLASLt GEMMs with fp32 accumulation. d_soft is converted to the table's
//    dtype for the GEMMs when it differs. Scratch: [rows, chunk] probabilities and, for d_logits,
//    [rows, chunk] f32.
void embedding(const Tensor& ids, const Tensor& table, float scale, Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& d_out, float scale, Tensor& d_table);
void soft_embedding(const Tensor& logits, const Tensor& table, float scale, Tensor& soft, Tensor& lse,
                    std::int64_t vocab_chunk);
void soft_embedding_backward(const Tensor& d_soft, const Tensor& logits, const Tensor& table, float scale,
                             const Tensor& soft, const Tensor& lse, Tensor* d_logits, Tensor& d_table,
                             std::int64_t vocab_chunk);
}  // namespace cuda

// The host plan of the deterministic embedding backward (exposed for the CPU tests): the token indices
// sorted by id, stably (tokens of one id stay in token order), and the distinct ids with the start of
// their run in `order` (`starts` has one more entry, the total). Throws the embedding op's error for an
// id outside [0, vocab).
struct EmbeddingGradPlan {
  std::vector<std::int32_t> order;   // [T] token indices grouped by id, ascending id
  std::vector<std::int32_t> ids;     // [U] distinct ids, ascending
  std::vector<std::int32_t> starts;  // [U + 1] offsets into order
};
EmbeddingGradPlan embedding_grad_plan(const std::int32_t* ids, std::int64_t count, std::int64_t vocab);

}  // namespace dg
