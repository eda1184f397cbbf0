// The host plan of the deterministic CUDA embedding backward (embedding_grad_plan, layers/ops/embedding.h),
// checked on the CPU: token indices grouped by id in ascending id, stable (a row's tokens keep token
// order, the order the CPU op adds them in), run starts, and the embedding op's error for a bad id.
#include <doctest/doctest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "layers/ops.h"

using namespace dg;

TEST_CASE("embedding_grad_plan groups tokens by id, stably, with run starts") {
  const std::vector<std::int32_t> ids{3, 0, 3, 6, 1, 3, 0};
  const EmbeddingGradPlan plan = embedding_grad_plan(ids.data(), std::int64_t(ids.size()), 7);
  CHECK(plan.order == std::vector<std::int32_t>{1, 6, 4, 0, 2, 5, 3});
  CHECK(plan.ids == std::vector<std::int32_t>{0, 1, 3, 6});
  CHECK(plan.starts == std::vector<std::int32_t>{0, 2, 3, 6, 7});

  const EmbeddingGradPlan empty = embedding_grad_plan(nullptr, 0, 7);
  CHECK(empty.order.empty());
  CHECK(empty.ids.empty());
  CHECK(empty.starts == std::vector<std::int32_t>{0});
}

TEST_CASE("embedding_grad_plan on random ids: a permutation, each run one id in token order") {
  std::mt19937 rng(5);
  for (const std::int64_t vocab : {1, 5, 1000}) {
    std::vector<std::int32_t> ids(777);
    for (auto& id : ids) id = std::int32_t(rng() % std::uint32_t(vocab));
    const EmbeddingGradPlan plan = embedding_grad_plan(ids.data(), std::int64_t(ids.size()), vocab);
    REQUIRE(plan.starts.size() == plan.ids.size() + 1);
    REQUIRE(plan.starts.back() == std::int32_t(ids.size()));
    std::vector<int> seen(ids.size(), 0);
    bool runs_ok = true;
    for (std::size_t u = 0; u < plan.ids.size(); ++u) {
      if (u > 0) runs_ok = runs_ok && plan.ids[u - 1] < plan.ids[u];
      runs_ok = runs_ok && plan.starts[u] < plan.starts[u + 1];
      for (std::int32_t k = plan.starts[u]; k < plan.starts[u + 1]; ++k) {
        const std::int32_t t = plan.order[std::size_t(k)];
        ++seen[std::size_t(t)];
        runs_ok = runs_ok && ids[std::size_t(t)] == plan.ids[u];
        if (k > plan.starts[u]) runs_ok = runs_ok && plan.order[std::size_t(k - 1)] < t;  // token order
      }
    }
    CHECK(runs_ok);
    CHECK(std::count(seen.begin(), seen.end(), 1) == std::int64_t(ids.size()));
  }
}

TEST_CASE("embedding_grad_plan rejects an id outside the vocabulary with the embedding op's message") {
  const std::vector<std::int32_t> ids{5, 200, 2};
  CHECK_THROWS_WITH_AS(embedding_grad_plan(ids.data(), 3, 99),
                       doctest::Contains("token id 200 at position 1 is outside the vocabulary [0, 99)"), Error);
  const std::vector<std::int32_t> neg{-1};
  CHECK_THROWS_WITH_AS(embedding_grad_plan(neg.data(), 1, 99), doctest::Contains("token id -1"), Error);
}
