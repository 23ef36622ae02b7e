# kvc_cc_library(NAME name SRCS ... HDRS ... DEPS ...)
#   Builds static library kvc_<name>, aliased kvc::<name>. Include paths are
#   rooted at the repository top, so headers are included as "cachesvc/x.h".
function(kvc_cc_library)
  cmake_parse_arguments(K "" "NAME" "SRCS;HDRS;DEPS" ${ARGN})
  set(target kvc_${K_NAME})
  if(K_SRCS)
    add_library(${target} STATIC ${K_SRCS} ${K_HDRS})
    target_include_directories(${target} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${target} PUBLIC ${K_DEPS})
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  else()
    add_library(${target} INTERFACE ${K_HDRS})
    target_include_directories(${target} INTERFACE ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
    target_link_libraries(${target} INTERFACE ${K_DEPS})
  endif()
  add_library(kvc::${K_NAME} ALIAS ${target})
endfunction()

# kvc_cc_test(NAME name SRCS ... DEPS ... [LABELS ...])
#   One GoogleTest binary registered with CTest through gtest_discover_tests.
function(kvc_cc_test)
  cmake_parse_arguments(K "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${K_NAME} ${K_SRCS})
  target_link_libraries(${K_NAME} PRIVATE ${K_DEPS} GTest::gmock GTest::gtest_main)
  target_compile_options(${K_NAME} PRIVATE -Wall -Wextra -Wno-unused-parameter)
  if(NOT K_TIMEOUT)
    set(K_TIMEOUT 300)
  endif()
  include(GoogleTest)
  gtest_discover_tests(${K_NAME}
    DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${K_TIMEOUT} LABELS "${K_LABELS}")
endfunction()
