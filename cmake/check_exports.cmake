# Checks the dynamic symbols a shared object defines. A shared object that exports a statically
# linked C++ runtime (libstdc++'s GNU-unique symbols above all) breaks the processes that load it
# before another copy of that runtime. Usage:
#   cmake -DLIBRARY=... -DNM=... [-DALLOWED=regex] [-DFORBIDDEN=regex] -P check_exports.cmake
# ALLOWED: every exported symbol must match it; FORBIDDEN: none may match it.
execute_process(COMMAND ${NM} -D --defined-only ${LIBRARY} OUTPUT_VARIABLE listing RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} -D ${LIBRARY} failed (${rc})")
endif()
string(REPLACE "\n" ";" lines "${listing}")
set(count 0)
foreach(line IN LISTS lines)
  if(line STREQUAL "")
    continue()
  endif()
  string(REGEX MATCH "[^ ]+$" symbol "${line}")
  math(EXPR count "${count} + 1")
  if(DEFINED ALLOWED AND NOT symbol MATCHES "${ALLOWED}")
    message(FATAL_ERROR "${LIBRARY} exports ${symbol}, which does not match ${ALLOWED}")
  endif()
  if(DEFINED FORBIDDEN AND symbol MATCHES "${FORBIDDEN}")
    message(FATAL_ERROR "${LIBRARY} exports ${symbol}, which matches ${FORBIDDEN}")
  endif()
endforeach()
if(count EQUAL 0)
  message(FATAL_ERROR "${LIBRARY} exports nothing")
endif()
message(STATUS "${LIBRARY}: ${count} exported symbols, checked")
