// cuda_host.h: the CUDA C of zeta_ref/cupy run on the CPU, for tests on machines without a GPU.
//
// A kernel source (fused.cu, ...) is compiled by the host's C++ compiler with this header in
// front of it. Each thread of a block is a fiber with a stack of its own: a thread runs until
// it reaches a barrier (__syncthreads, __syncwarp) or a warp operation (a shuffle, a ballot),
// then hands over to the next one. When every thread of the block waits, the scheduler
// completes what can be completed: a warp operation once every lane its mask names has arrived
// with that mask, a block barrier once every live thread has. Blocks run one after another, so
// __shared__ variables are statics (filled with 0xff bytes as each block starts) and atomics
// plain read-modify-writes.
//
// What it checks that a GPU would not tell you: a warp operation whose mask names a lane that
// has exited or waits elsewhere, a shuffle that reads a lane outside the mask, a deadlock; an
// access past the end of an array (tests/cuda_host/cupy places an inaccessible page there) or
// below a thread's stack; a read of shared memory before the block wrote it (the poison shows
// in the results); a result that depends on the order threads take turns (from the first or
// from the last, by turns: ZETA_REF_CUDA_HOST_ORDER). What it cannot check: speed, races that
// neither order shows (the schedule is one of two fixed interleavings), the device's own math
// functions (expf and the like are the host's, within an ulp or two of the device's), the
// memory model. tests/cuda_host/README.md says how the tests use it.
#pragma once

#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
// __shared__ arrays: statics in a section of their own, filled with 0xff bytes (NaN, -1) at
// the start of every block, so that a read before the block's first write shows
#define __shared__ static __attribute__((section("zh_shared")))
#define __launch_bounds__(...)
#define warpSize 32

// ---------------------------------------------------------------- CUDA's built-in types
struct uint3 { unsigned x, y, z; };
struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) double2 { double x, y; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float a, float b) { return {a, b}; }
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline double2 make_double2(double a, double b) { return {a, b}; }
inline int2 make_int2(int a, int b) { return {a, b}; }

// ---------------------------------------------------------------- the scheduler's state
namespace zh {
enum State { READY, AT_BLOCK, AT_WARP, DONE };
enum Op { OP_SYNC, OP_SHFL, OP_XOR, OP_UP, OP_DOWN, OP_BALLOT };
static const char* const OP_NAMES[] = {"__syncwarp", "__shfl_sync", "__shfl_xor_sync",
                                       "__shfl_up_sync", "__shfl_down_sync", "__ballot_sync"};

// ---------------------------------------------------------------- switching fibers
// On x86-64 a fiber switch saves the six callee-saved registers and the stack pointer (a few
// ns); elsewhere ucontext's swapcontext (which also saves the signal mask: a system call).
#if defined(__x86_64__)
extern "C" void zh_switch(void** save_sp, void* load_sp);
asm(R"(
    .text
    .p2align 4
    .type zh_switch, @function
zh_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size zh_switch, .-zh_switch
)");
struct Context { void* sp; };
#else
struct Context { ucontext_t uc; };
#endif

struct Thread {
    Context ctx;
    uint3 tid;
    int lane, warp;
    State state;
    Op op;
    unsigned mask;
    int arg, width, pred;
    unsigned long long val, result;
};

inline Thread* cur = nullptr;
inline uint3 block_idx;
inline dim3 block_dim, grid_dim;
inline Context sched;
inline std::string error;
inline std::function<void()>* body = nullptr;
inline std::vector<Thread> threads;
constexpr size_t STACK = 64 * 1024;  // a thread's stack; an inaccessible page below each
constexpr int MAX_THREADS = 1024;
inline char* stack_area = nullptr;

inline size_t page() { return (size_t)sysconf(_SC_PAGESIZE); }

inline char* stack_of(int i) { return stack_area + (size_t)i * (STACK + page()) + page(); }

inline bool map_stacks() {
    if (stack_area) return true;
    size_t size = (size_t)MAX_THREADS * (STACK + page());
    void* p = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return false;
    stack_area = (char*)p;
    for (int i = 0; i < MAX_THREADS; ++i) mprotect(stack_of(i) - page(), page(), PROT_NONE);
    return true;
}

inline void fail(const std::string& what) {
    if (error.empty()) error = what;
}

inline std::string where() {
    char buf[160];
    snprintf(buf, sizeof buf, "block (%u, %u, %u), thread (%u, %u, %u)", block_idx.x,
             block_idx.y, block_idx.z, cur->tid.x, cur->tid.y, cur->tid.z);
    return buf;
}

template <typename T>
unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 8 bytes");
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}

template <typename T>
T from_bits(unsigned long long b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}

inline void switch_to(Context* from, Context* to) {
#if defined(__x86_64__)
    zh_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
}

inline void yield() { switch_to(&cur->ctx, &sched); }

inline unsigned long long warp_op(Op op, unsigned mask, unsigned long long val, int arg,
                                  int width, int pred) {
    Thread* t = cur;
    if (!((mask >> t->lane) & 1u)) {
        char buf[96];
        snprintf(buf, sizeof buf, "%s with mask 0x%08x from lane %d, not in its own mask",
                 OP_NAMES[op], mask, t->lane);
        fail(where() + ": " + buf);
    }
    if (width < 1 || width > 32 || (width & (width - 1)))
        fail(where() + ": " + OP_NAMES[op] + " with a width that is not a power of 2 up to 32");
    t->op = op;
    t->mask = mask;
    t->val = val;
    t->arg = arg;
    t->width = width;
    t->pred = pred;
    t->state = AT_WARP;
    yield();
    return t->result;
}

[[noreturn]] inline void entry() {
    (*body)();
    cur->state = DONE;
    for (;;) yield();  // the scheduler never resumes a finished thread
}

// A new fiber on stack [base, base + size) that starts in entry().
inline void start(Context* c, char* base, size_t size) {
#if defined(__x86_64__)
    // zh_switch pops six registers and returns: into entry, with the stack aligned as after
    // a call (rsp + 8 a multiple of 16)
    void** top = (void**)(((uintptr_t)(base + size)) & ~(uintptr_t)15);
    *--top = nullptr;               // entry's return address: never used
    *--top = (void*)&entry;         // where zh_switch returns to
    for (int r = 0; r < 6; ++r) *--top = nullptr;
    c->sp = top;
#else
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = base;
    c->uc.uc_stack.ss_size = size;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, (void (*)())entry, 0);
#endif
}

// The lanes of warp w whose mask is `mask` all wait with it: complete their operation.
inline void complete(int first, int count, unsigned mask) {
    Thread* lanes = &threads[first];
    Op op = OP_SYNC;
    int width = 32;
    bool found = false;
    for (int l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        if (!found) { op = lanes[l].op; width = lanes[l].width; found = true; }
        if (lanes[l].op != op || lanes[l].width != width) {
            char buf[200];
            snprintf(buf, sizeof buf, "warp %d of block (%u, %u, %u): lanes of mask 0x%08x "
                     "meet different warp operations (%s and %s)", lanes[0].warp, block_idx.x,
                     block_idx.y, block_idx.z, mask, OP_NAMES[op], OP_NAMES[lanes[l].op]);
            fail(buf);
            return;
        }
    }
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l)
        if (((mask >> l) & 1u) && lanes[l].pred) ballot |= 1u << l;
    for (int l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        Thread& t = lanes[l];
        int seg = l & ~(width - 1), src = l;
        switch (op) {
            case OP_SHFL: src = seg + (t.arg & (width - 1)); break;
            // a butterfly may read an earlier group of `width` lanes, not a later one
            case OP_XOR: src = l ^ t.arg; if (src >= seg + width) src = l; break;
            case OP_UP: src = l - t.arg; if (src < seg) src = l; break;
            case OP_DOWN: src = l + t.arg; if (src >= seg + width) src = l; break;
            default: break;
        }
        if (op == OP_BALLOT) t.result = ballot;
        else if (op != OP_SYNC) {
            if (src < 0 || src >= 32 || !((mask >> src) & 1u) || src >= count) {
                char buf[200];
                snprintf(buf, sizeof buf, "warp %d of block (%u, %u, %u): lane %d's %s reads "
                         "lane %d, outside the mask 0x%08x", t.warp, block_idx.x, block_idx.y,
                         block_idx.z, l, OP_NAMES[op], src, mask);
                fail(buf);
                return;
            }
            t.result = lanes[src].val;
        }
        t.state = READY;
    }
}

// Complete every warp operation whose lanes have all arrived; true if any was.
inline bool complete_warps(int n) {
    bool any = false;
    for (int first = 0; first < n; first += 32) {
        int count = n - first < 32 ? n - first : 32;
        for (int l = 0; l < count; ++l) {
            Thread& t = threads[first + l];
            if (t.state != AT_WARP) continue;
            unsigned mask = t.mask;
            bool ready = true;
            for (int m = 0; m < 32 && ready; ++m) {
                if (!((mask >> m) & 1u)) continue;
                ready = m < count && threads[first + m].state == AT_WARP &&
                        threads[first + m].mask == mask;
            }
            if (ready) { complete(first, count, mask); any = true; }
        }
    }
    return any;
}

inline std::string stuck(int n) {
    std::string s = "deadlock in block (" + std::to_string(block_idx.x) + ", " +
                    std::to_string(block_idx.y) + ", " + std::to_string(block_idx.z) + "):";
    int shown = 0;
    for (int i = 0; i < n && shown < 8; ++i) {
        Thread& t = threads[i];
        if (t.state == DONE) continue;
        char buf[160];
        if (t.state == AT_WARP)
            snprintf(buf, sizeof buf, " thread %d (lane %d) at %s, mask 0x%08x;", i, t.lane,
                     OP_NAMES[t.op], t.mask);
        else
            snprintf(buf, sizeof buf, " thread %d (lane %d) at __syncthreads;", i, t.lane);
        s += buf;
        ++shown;
    }
    for (int i = 0; i < n; ++i)
        if (threads[i].state == DONE) { s += " some threads have exited"; break; }
    return s;
}

extern "C" char __start_zh_shared[] __attribute__((weak));
extern "C" char __stop_zh_shared[] __attribute__((weak));

// The order in which the threads of a block take turns, from ZETA_REF_CUDA_HOST_ORDER:
// "forward" (from the first), "reverse" (from the last) or, unset or "alternate", the two by
// turns, block by block and launch by launch, so that one run of the tests meets every kernel
// in both orders: a result that depends on the order (a missing barrier) differs in one.
enum Order { FORWARD, REVERSE, ALTERNATE };
inline Order order_asked() {
    const char* order = getenv("ZETA_REF_CUDA_HOST_ORDER");
    if (order && !strcmp(order, "forward")) return FORWARD;
    if (order && !strcmp(order, "reverse")) return REVERSE;
    return ALTERNATE;
}
inline unsigned long long launches = 0;

inline bool run_block(int n, bool reverse) {
    if (__start_zh_shared && __stop_zh_shared > __start_zh_shared)
        memset(__start_zh_shared, 0xff, (size_t)(__stop_zh_shared - __start_zh_shared));
    if (threads.size() < (size_t)n) threads.resize(n);
    for (int i = 0; i < n; ++i) {
        Thread& t = threads[i];
        t.tid = {i % block_dim.x, (i / block_dim.x) % block_dim.y,
                 i / (block_dim.x * block_dim.y)};
        t.lane = i % 32;
        t.warp = i / 32;
        t.state = READY;
        t.pred = 0;
        start(&t.ctx, stack_of(i), STACK);
    }
    for (;;) {
        for (int turn = 0; turn < n; ++turn) {
            int i = reverse ? n - 1 - turn : turn;
            if (threads[i].state != READY) continue;
            cur = &threads[i];
            switch_to(&sched, &cur->ctx);
            if (!error.empty()) return false;
        }
        if (complete_warps(n)) {
            if (!error.empty()) return false;
            continue;
        }
        int live = 0, waiting = 0, count = 0;
        for (int i = 0; i < n; ++i) {
            if (threads[i].state == DONE) continue;
            ++live;
            if (threads[i].state == AT_BLOCK) { ++waiting; count += threads[i].pred; }
        }
        if (live == 0) return true;
        if (waiting == live) {
            for (int i = 0; i < n; ++i)
                if (threads[i].state == AT_BLOCK) { threads[i].result = count; threads[i].state = READY; }
            continue;
        }
        fail(stuck(n));
        return false;
    }
}

template <typename... A, size_t... I>
std::tuple<std::decay_t<A>...> read_args(void** argv, std::index_sequence<I...>) {
    return std::tuple<std::decay_t<A>...>(*reinterpret_cast<std::decay_t<A>*>(argv[I])...);
}

// ---------------------------------------------------------------- faults
// A thread that touches memory it may not (an inaccessible page: past the end of an array the
// stand-in for CuPy allocated, or below a thread's stack) raises SIGSEGV; the handler, on a
// stack of its own, jumps back to launch(), which reports the thread and the address.
inline sigjmp_buf escape;
inline void* fault_at = nullptr;
inline char signal_stack[1 << 16];

inline void on_fault(int, siginfo_t* info, void*) {
    fault_at = info->si_addr;
    siglongjmp(escape, 1);
}

inline std::string fault_text() {
    char buf[160];
    char* a = (char*)fault_at;
    size_t size = (size_t)MAX_THREADS * (STACK + page());
    if (a >= stack_area && a < stack_area + size)
        snprintf(buf, sizeof buf, ": stack overflow (more than %zu KiB of locals)", STACK >> 10);
    else
        snprintf(buf, sizeof buf, ": out-of-bounds access at address 0x%llx",
                 (unsigned long long)(uintptr_t)fault_at);
    return where() + buf;
}

// Run kernel f on grid g of blocks b; its arguments are argv[i], each pointing at a value of
// the parameter's type. 0 on success; else 1 with the error's text in err.
template <typename... A>
int launch(void (*f)(A...), dim3 g, dim3 b, void** argv, char* err, size_t err_len) {
    auto args = read_args<A...>(argv, std::index_sequence_for<A...>{});
    std::function<void()> run = [&] { std::apply(f, args); };
    body = &run;
    grid_dim = g;
    block_dim = b;
    error.clear();
    int n = (int)(b.x * b.y * b.z);
    Order order = order_asked();
    unsigned long long launch_no = launches++;
    if (n < 1 || n > MAX_THREADS) error = "a block of " + std::to_string(n) + " threads";
    if (!map_stacks()) error = "no memory for the threads' stacks";
    stack_t alt{}, old_alt;
    alt.ss_sp = signal_stack;
    alt.ss_size = sizeof signal_stack;
    struct sigaction sa {}, old_segv, old_bus;
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaltstack(&alt, &old_alt);
    sigaction(SIGSEGV, &sa, &old_segv);
    sigaction(SIGBUS, &sa, &old_bus);
    if (sigsetjmp(escape, 1) == 0) {
        for (unsigned z = 0; z < g.z && error.empty(); ++z)
            for (unsigned y = 0; y < g.y && error.empty(); ++y)
                for (unsigned x = 0; x < g.x && error.empty(); ++x) {
                    block_idx = {x, y, z};
                    bool odd = (launch_no + x + y + z) & 1;
                    run_block(n, order == REVERSE || (order == ALTERNATE && odd));
                }
    } else {
        error = fault_text();
    }
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaltstack(&old_alt, nullptr);
    body = nullptr;
    if (error.empty()) return 0;
    snprintf(err, err_len, "%s", error.c_str());
    return 1;
}
}  // namespace zh

#define threadIdx (zh::cur->tid)
#define blockIdx (zh::block_idx)
#define blockDim (zh::block_dim)
#define gridDim (zh::grid_dim)

// ---------------------------------------------------------------- barriers and warp operations
inline void __syncthreads() {
    zh::cur->state = zh::AT_BLOCK;
    zh::cur->pred = 0;
    zh::yield();
}
inline int __syncthreads_count(int pred) {
    zh::cur->state = zh::AT_BLOCK;
    zh::cur->pred = pred != 0;
    zh::yield();
    return (int)zh::cur->result;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { zh::warp_op(zh::OP_SYNC, mask, 0, 0, 32, 0); }
inline unsigned __ballot_sync(unsigned mask, int pred) {
    return (unsigned)zh::warp_op(zh::OP_BALLOT, mask, 0, 0, 32, pred != 0);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    return zh::from_bits<T>(zh::warp_op(zh::OP_SHFL, mask, zh::to_bits(v), src, width, 0));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    return zh::from_bits<T>(zh::warp_op(zh::OP_XOR, mask, zh::to_bits(v), lane_mask, width, 0));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return zh::from_bits<T>(zh::warp_op(zh::OP_UP, mask, zh::to_bits(v), (int)delta, width, 0));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    return zh::from_bits<T>(zh::warp_op(zh::OP_DOWN, mask, zh::to_bits(v), (int)delta, width, 0));
}

// A trap stops the kernel with an error: here the thread ends, and the launch reports where.
[[noreturn]] inline void __trap() {
    zh::fail(zh::where() + ": __trap()");
    zh::cur->state = zh::DONE;
    for (;;) zh::yield();  // the scheduler never resumes a finished thread
}

// ---------------------------------------------------------------- atomics (blocks run in turn)
template <typename T>
T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T>
T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }
template <typename T>
T atomicMin(T* p, T v) { T old = *p; if (v < old) *p = v; return old; }

// ---------------------------------------------------------------- intrinsics
template <typename T>
T __ldg(const T* p) { return *p; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __int_as_float(int x) { return zh::from_bits<float>((unsigned)x); }
inline int __float_as_int(float x) { return (int)(unsigned)zh::to_bits(x); }
inline double __longlong_as_double(long long x) { return zh::from_bits<double>((unsigned long long)x); }
inline long long __double_as_longlong(double x) { return (long long)zh::to_bits(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll((unsigned long long)x) : 64; }

// CUDA's min and max: the usual arithmetic conversions, and for floating types fmin and fmax
// (a NaN loses to a number), as CUDA's overloads call fminf and fmaxf
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmin((C)a, (C)b);
    else return (C)b < (C)a ? (C)b : (C)a;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
    using C = std::common_type_t<A, B>;
    if constexpr (std::is_floating_point_v<C>) return std::fmax((C)a, (C)b);
    else return (C)a < (C)b ? (C)b : (C)a;
}
