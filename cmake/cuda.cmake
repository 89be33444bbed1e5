# cuda.cmake: the _cuda extension module (included by CMakeLists.txt when nvcc is found).
#
# Architectures: DEEPKERN_CUDA_ARCHS (cache or environment), default "80;90" (A100, H100).
# The module links the CUDA runtime only: importing deepkern never touches libcudart unless
# _cuda is imported, and a machine without a driver simply reports the backend as unavailable.
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)

if(DEFINED ENV{DEEPKERN_CUDA_ARCHS} AND NOT DEEPKERN_CUDA_ARCHS)
  set(DEEPKERN_CUDA_ARCHS "$ENV{DEEPKERN_CUDA_ARCHS}")
endif()
set(DEEPKERN_CUDA_ARCHS "80;90" CACHE STRING "CUDA architectures to compile for (e.g. 80;90)")
set(CMAKE_CUDA_STANDARD 17)
set(CMAKE_CUDA_STANDARD_REQUIRED ON)

file(GLOB DK_CUDA_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/csrc/cuda/*.cu)
pybind11_add_module(_cuda MODULE csrc/bindings/module_cuda.cpp csrc/bindings/bind_layers_cuda.cpp
                    csrc/bindings/bind_optim_cuda.cpp
                    csrc/bindings/bind_fractional_cuda.cpp
                    ${DK_CUDA_SOURCES})
target_include_directories(_cuda PRIVATE csrc)
set_target_properties(_cuda PROPERTIES CUDA_ARCHITECTURES "${DEEPKERN_CUDA_ARCHS}")
target_link_libraries(_cuda PRIVATE CUDA::cudart)
# -lineinfo: compute-sanitizer and Nsight map faults and hot spots back to source lines (no
# effect on the generated code). Warnings on for both the host and the device compiler.
target_compile_options(_cuda PRIVATE
  $<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr -O3 -lineinfo -Xcompiler=-Wall,-Wextra>
  $<$<COMPILE_LANGUAGE:CXX>:-O3 -Wall -Wextra>)
string(REPLACE ";" "," DK_ARCHS_STR "${DEEPKERN_CUDA_ARCHS}")
target_compile_definitions(_cuda PRIVATE DEEPKERN_VERSION="${SKBUILD_PROJECT_VERSION}"
                                         DK_CUDA_ARCHS="${DK_ARCHS_STR}")
install(TARGETS _cuda LIBRARY DESTINATION deepkern)
message(STATUS "deepkern: CUDA ${CMAKE_CUDA_COMPILER_VERSION}: yes (archs ${DEEPKERN_CUDA_ARCHS})")
