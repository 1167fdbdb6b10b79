# The install test: `cmake --install` the build tree into a fresh prefix, then
# configure, build and run tests/install/ against it with find_package(plexus).
#
#   cmake -DPLEXUS_BUILD_DIR=... -DCONSUMER_SOURCE_DIR=... -DWORK_DIR=...
#         [-DGENERATOR=...] [-DCXX_COMPILER=...] [-DBUILD_TYPE=...] [-DEXTRA_FLAGS=...]
#         -P run.cmake
cmake_minimum_required(VERSION 3.25)
foreach(v PLEXUS_BUILD_DIR CONSUMER_SOURCE_DIR WORK_DIR)
  if(NOT ${v})
    message(FATAL_ERROR "run.cmake: -D${v}=... is required")
  endif()
endforeach()
if(NOT BUILD_TYPE)
  set(BUILD_TYPE Release)
endif()

set(prefix ${WORK_DIR}/prefix)
set(consumer_build ${WORK_DIR}/consumer-build)
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

function(step what)
  message(STATUS "install test: ${what}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install test: ${what} failed (${rc}):\n${out}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()

step("cmake --install into ${prefix}"
  ${CMAKE_COMMAND} --install ${PLEXUS_BUILD_DIR} --prefix ${prefix})
if(NOT EXISTS ${prefix}/include/plexus/node.hpp)
  message(FATAL_ERROR "install test: ${prefix}/include/plexus/node.hpp was not installed")
endif()

set(configure_args -S ${CONSUMER_SOURCE_DIR} -B ${consumer_build}
  -DCMAKE_PREFIX_PATH=${prefix} -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
  # Only the installed copy may be found, never the build tree through the user package registry.
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
if(GENERATOR)
  list(APPEND configure_args -G ${GENERATOR})
endif()
if(CXX_COMPILER)
  list(APPEND configure_args -DCMAKE_CXX_COMPILER=${CXX_COMPILER})
endif()
if(EXTRA_FLAGS)
  list(APPEND configure_args "-DCMAKE_CXX_FLAGS=${EXTRA_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${EXTRA_FLAGS}")
endif()
step("configure the consumer with CMAKE_PREFIX_PATH=${prefix}" ${CMAKE_COMMAND} ${configure_args})
string(FIND "${last_output}" "found in ${prefix}/" at)
if(at EQUAL -1)
  message(FATAL_ERROR "install test: plexus was not found in ${prefix}:\n${last_output}")
endif()
step("build the consumer" ${CMAKE_COMMAND} --build ${consumer_build} -j 2)

find_program(consumer_exe consumer PATHS ${consumer_build} NO_DEFAULT_PATH REQUIRED)
step("run ${consumer_exe}" ${consumer_exe})
message(STATUS "install test: ${last_output}")
message(STATUS "install test: passed")
