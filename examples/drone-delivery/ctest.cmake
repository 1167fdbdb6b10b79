# The drone-delivery scenario as a test (examples/drone-delivery/README.md). Included
# from tests/CMakeLists.txt. run.sh picks its own free UDP port and cluster name and
# binds only tcp://127.0.0.1:*, so it runs in parallel with the rest of the suite; it
# bounds itself at TIMEOUT_S (60 s; a normal run takes about 3 s), and the CTest
# TIMEOUT covers slow sanitized builds. It leaves no process behind, also on timeout
# (the services run with --exit-with-parent).
if(TARGET plexus-demo-client)
  add_test(NAME examples.drone-delivery
    COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/run.sh $<TARGET_FILE_DIR:plexus-demo-client>)
  set_tests_properties(examples.drone-delivery PROPERTIES TIMEOUT 120 LABELS examples)
endif()
