# [discovery] the discovery library alone: beacon codec, agents on one host, seeds and
# gossip, several hosts in network namespaces. Included from tests/CMakeLists.txt.
#
# The test executable is also the helper process of the multi-process tests: run as
# `plexus_discovery_tests --probe ...` it becomes one discovery agent that prints the
# peers it sees (see probe_main in discovery_test.cpp). It needs plexus::discovery only,
# not the framework.
if(TARGET plexus::discovery AND EXISTS ${CMAKE_CURRENT_LIST_DIR}/discovery_test.cpp)
  add_executable(plexus_discovery_tests ${CMAKE_CURRENT_LIST_DIR}/discovery_test.cpp)
  target_link_libraries(plexus_discovery_tests PRIVATE plexus::discovery msgpackc-cxx Catch2::Catch2 plexus_warnings)
  target_compile_definitions(plexus_discovery_tests PRIVATE MSGPACK_NO_BOOST
    PLEXUS_SOURCE_DIR="${CMAKE_CURRENT_LIST_DIR}/..")
  catch_discover_tests(plexus_discovery_tests PROPERTIES TIMEOUT 60)
endif()
