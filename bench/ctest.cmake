# One quick run of the benchmarks in the test suite (included from tests/CMakeLists.txt):
# every figure must run and the table must print. It asserts nothing about speed.
if(TARGET plexus_bench)
  add_test(NAME bench.smoke COMMAND plexus_bench --smoke)
  set_tests_properties(bench.smoke PROPERTIES
    TIMEOUT 60
    LABELS bench
    # The table header, then the last line, which says no figure failed.
    PASS_REGULAR_EXPRESSION "\\| # +\\| figure .*\\| verdict .*figures ran, 0 failed")
endif()
