// Logging: info() and warn() print on rank 0 only (one voice for the whole job); error() prints on
// any rank, prefixed with the rank, because errors are often rank-local.
#pragma once
#include <fmt/format.h>

#include <cstdio>

namespace dg::log {

void set_rank(int rank);
int rank();
std::string timestamp();  // "2026-11-23 09:14:05"

template <class... Args>
void info(fmt::format_string<Args...> f, Args&&... args) {
  if (rank() != 0) return;
  fmt::print(stdout, "[{}] {}\n", timestamp(), fmt::format(f, std::forward<Args>(args)...));
  std::fflush(stdout);
}

template <class... Args>
void warn(fmt::format_string<Args...> f, Args&&... args) {
  if (rank() != 0) return;
  fmt::print(stderr, "[{}] warning: {}\n", timestamp(), fmt::format(f, std::forward<Args>(args)...));
}

template <class... Args>
void error(fmt::format_string<Args...> f, Args&&... args) {
  fmt::print(stderr, "dgemma: error{}: {}\n", rank() > 0 ? fmt::format(" (rank {})", rank()) : std::string(),
             fmt::format(f, std::forward<Args>(args)...));
  std::fflush(stderr);
}

}  // namespace dg::log
