# Finds the DLPack header dlpack/dlpack.h: DLPACK_ROOT (CMake or environment variable), then the
# system (Debian: libdlpack-dev). Defines DLPack_INCLUDE_DIR and the interface target DLPack::dlpack.
include(FindPackageHandleStandardArgs)

find_path(DLPack_INCLUDE_DIR NAMES dlpack/dlpack.h
          HINTS "${DLPACK_ROOT}" "$ENV{DLPACK_ROOT}"
          PATH_SUFFIXES include usr/include)

find_package_handle_standard_args(
  DLPack
  REQUIRED_VARS DLPack_INCLUDE_DIR
  REASON_FAILURE_MESSAGE "install libdlpack-dev, or set DLPACK_ROOT to a prefix holding include/dlpack/dlpack.h")

if(DLPack_FOUND AND NOT TARGET DLPack::dlpack)
  add_library(DLPack::dlpack INTERFACE IMPORTED)
  set_target_properties(DLPack::dlpack PROPERTIES INTERFACE_INCLUDE_DIRECTORIES
                                                  "${DLPack_INCLUDE_DIR}")
endif()
