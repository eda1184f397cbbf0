# Corpus replay tests (docs/fuzzing.md), included from tests/CMakeLists.txt: dgemma_fuzz_replay(<target>)
# builds fuzz/targets/<target>.cpp with fuzz/replay_main.cpp against dgemma_core with the normal compiler
# (no clang, no libFuzzer) and registers the ctest test fuzz_replay_<target>, which runs every file of
# fuzz/corpus/<target>/ (seeds, kept fuzzer finds and the inputs of fixed crashes) through the target.
function(dgemma_fuzz_replay target)
  set(dir ${PROJECT_SOURCE_DIR}/fuzz)
  add_executable(fuzz_replay_${target} ${dir}/targets/${target}.cpp ${dir}/replay_main.cpp)
  target_link_libraries(fuzz_replay_${target} PRIVATE dgemma_core)
  target_compile_definitions(fuzz_replay_${target} PRIVATE DGEMMA_FIXTURES="${PROJECT_SOURCE_DIR}/tests/fixtures")
  target_compile_options(fuzz_replay_${target} PRIVATE ${DGEMMA_CXX_WARNINGS})
  add_test(NAME fuzz_replay_${target} COMMAND fuzz_replay_${target} ${dir}/corpus/${target})
  set_tests_properties(fuzz_replay_${target} PROPERTIES ENVIRONMENT "${DGEMMA_TEST_ENV}" TIMEOUT 300 LABELS fuzz)
endfunction()
