# Finds the CUTLASS/CuTe headers.
#   1. CUTLASS_DIR (CMake or environment variable): a CUTLASS checkout or install prefix, or its
#      include directory.
#   2. The `nvidia-cutlass` Python package (pip install nvidia-cutlass), which ships the headers
#      under cutlass_library/source/include.
# Defines CUTLASS_INCLUDE_DIR and the interface target CUTLASS::cutlass.
include(FindPackageHandleStandardArgs)

set(_cutlass_hints)
foreach(_dir IN ITEMS "${CUTLASS_DIR}" "$ENV{CUTLASS_DIR}")
  if(_dir)
    list(APPEND _cutlass_hints "${_dir}" "${_dir}/include")
  endif()
endforeach()

if(NOT _cutlass_hints)
  find_package(Python3 COMPONENTS Interpreter QUIET)
  if(Python3_Interpreter_FOUND)
    execute_process(
      COMMAND "${Python3_EXECUTABLE}" -c
              "import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), 'source', 'include'))"
      OUTPUT_VARIABLE _cutlass_py_include
      OUTPUT_STRIP_TRAILING_WHITESPACE
      ERROR_QUIET)
    if(_cutlass_py_include)
      list(APPEND _cutlass_hints "${_cutlass_py_include}")
    endif()
  endif()
endif()

find_path(CUTLASS_INCLUDE_DIR NAMES cute/tensor.hpp cutlass/cutlass.h HINTS ${_cutlass_hints}
          NO_DEFAULT_PATH)
find_path(CUTLASS_INCLUDE_DIR NAMES cute/tensor.hpp cutlass/cutlass.h)

find_package_handle_standard_args(
  CUTLASS
  REQUIRED_VARS CUTLASS_INCLUDE_DIR
  REASON_FAILURE_MESSAGE
    "set CUTLASS_DIR to a CUTLASS tree, or `pip install nvidia-cutlass` into the Python that CMake finds")

if(CUTLASS_FOUND AND NOT TARGET CUTLASS::cutlass)
  add_library(CUTLASS::cutlass INTERFACE IMPORTED)
  set_target_properties(CUTLASS::cutlass PROPERTIES INTERFACE_INCLUDE_DIRECTORIES
                                                    "${CUTLASS_INCLUDE_DIR}")
endif()
