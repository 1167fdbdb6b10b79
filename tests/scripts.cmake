# Scripted tests: the examples, the Python client, the install test. Included at the
# end of tests/CMakeLists.txt. Every test has a TIMEOUT so a hang fails; all of them
# pick free ports, so they can run in parallel with the rest of the suite (ctest -j).

if(TARGET plexus-hello)
  add_test(NAME examples.hello COMMAND plexus-hello)
  set_tests_properties(examples.hello PROPERTIES TIMEOUT 30 LABELS examples)
endif()

# README.md quotes the hello example: they must not drift apart.
add_test(NAME examples.readme-quotes-hello
  COMMAND ${CMAKE_COMMAND} -DSOURCE=${PROJECT_SOURCE_DIR}/examples/hello/main.cpp
    -DREADME=${PROJECT_SOURCE_DIR}/README.md -P ${PROJECT_SOURCE_DIR}/examples/hello/check_readme.cmake)
set_tests_properties(examples.readme-quotes-hello PROPERTIES TIMEOUT 30 LABELS examples)

if(TARGET two-node-demo)
  add_test(NAME examples.two-node
    COMMAND bash ${PROJECT_SOURCE_DIR}/examples/two-node/run.sh $<TARGET_FILE:two-node-demo>)
  # run.sh bounds itself at 20 s (TIMEOUT_S); the margin covers slow sanitized builds.
  set_tests_properties(examples.two-node PROPERTIES TIMEOUT 60 LABELS examples)
endif()

# The Python client runs with Debian's own interpreter, which has python3-zmq and
# python3-msgpack (a python3 earlier on PATH may not).
if(TARGET plexus-node AND EXISTS /usr/bin/python3)
  add_test(NAME python.client
    COMMAND bash ${PROJECT_SOURCE_DIR}/examples/python/run_test.sh $<TARGET_FILE:plexus-node>)
  set_tests_properties(python.client PROPERTIES TIMEOUT 60 LABELS python)
endif()

# Install, then build and run a consumer project with find_package(plexus).
set(_plexus_install_flags "")
if(PLEXUS_SANITIZE)
  set(_plexus_install_flags "-fsanitize=${PLEXUS_SANITIZE}")
endif()
add_test(NAME install.find_package
  COMMAND ${CMAKE_COMMAND}
    -DPLEXUS_BUILD_DIR=${PROJECT_BINARY_DIR}
    -DCONSUMER_SOURCE_DIR=${CMAKE_CURRENT_SOURCE_DIR}/install
    -DWORK_DIR=${CMAKE_CURRENT_BINARY_DIR}/install-test
    -DGENERATOR=${CMAKE_GENERATOR}
    -DCXX_COMPILER=${CMAKE_CXX_COMPILER}
    -DBUILD_TYPE=$<CONFIG>
    -DEXTRA_FLAGS=${_plexus_install_flags}
    -P ${CMAKE_CURRENT_SOURCE_DIR}/install/run.cmake)
# It compiles a program: give it both cores so that it does not slow down the
# socket tests that run beside it under ctest -j2.
set_tests_properties(install.find_package PROPERTIES TIMEOUT 300 LABELS install PROCESSORS 2)
