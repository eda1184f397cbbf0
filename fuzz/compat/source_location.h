// Force-included (-include) into every file of the fuzz build. clang 14 (Debian 12's clang) lacks
// __builtin_source_location, so GCC 12's libstdc++ <source_location> declares nothing for it; this supplies
// a std::source_location with the same interface from the builtins clang 14 does have (current() is
// constexpr, not consteval: clang 14 rejects a consteval call in a default argument). Only the fuzz build
// (clang) uses it; the normal g++ build never sees this file.
#pragma once
#if defined(__clang__) && defined(__cplusplus) && __cplusplus > 201703L
#include <source_location>
#ifndef __cpp_lib_source_location
#include <cstdint>
namespace std {
struct source_location {
  static constexpr source_location current(const char* file = __builtin_FILE(),
                                           const char* function = __builtin_FUNCTION(),
                                           uint_least32_t line = __builtin_LINE(),
                                           uint_least32_t column = __builtin_COLUMN()) noexcept {
    source_location s;
    s.file_ = file;
    s.function_ = function;
    s.line_ = line;
    s.column_ = column;
    return s;
  }
  constexpr source_location() noexcept = default;
  constexpr uint_least32_t line() const noexcept { return line_; }
  constexpr uint_least32_t column() const noexcept { return column_; }
  constexpr const char* file_name() const noexcept { return file_; }
  constexpr const char* function_name() const noexcept { return function_; }

 private:
  const char* file_ = "";
  const char* function_ = "";
  uint_least32_t line_ = 0, column_ = 0;
};
}  // namespace std
#define __cpp_lib_source_location 201907L
#endif
#endif
