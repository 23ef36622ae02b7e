// Every file in kernels/cpu/isa/ is compiled once per x86-64 ISA level
// (v4: AVX-512, v3: AVX2+FMA) with KVC_CPU_ISA set to the level; its code
// lives in namespace kvc::kernels::KVC_CPU_NS (cpu_v4, cpu_v3) so the copies
// never collide. A CPU without AVX2 runs the reference path. cpu/dispatch.cc picks one at run
// time. The copies are partially linked and every symbol but
// KVC_CPU_NS::Kernels() is made local (kernels/CMakeLists.txt), so an inline
// function instantiated with AVX-512 instructions can never be picked by the
// linker for a caller outside its copy.
#ifndef KVC_KERNELS_CPU_ISA_ISA_H_
#define KVC_KERNELS_CPU_ISA_ISA_H_

#ifndef KVC_CPU_ISA
#error "kernels/cpu/isa/ sources are compiled with -DKVC_CPU_ISA=<v3|v4>"
#endif

#define KVC_CPU_NS_CONCAT_(a, b) a##b
#define KVC_CPU_NS_CONCAT(a, b) KVC_CPU_NS_CONCAT_(a, b)
#define KVC_CPU_NS KVC_CPU_NS_CONCAT(cpu_, KVC_CPU_ISA)

#endif  // KVC_KERNELS_CPU_ISA_ISA_H_
