// oneDNN's fused RNN primitives (LSTM, linear-before-reset GRU, tanh RNN) as XLA FFI handlers.
//
// Built on first use by lstm_jax/impls/_onednn/build.py; called from lstm_jax/impls/onednn.py,
// which documents the semantics. One layer, one direction per call, time-major:
//
//   forward  (x (T,B,I), h0 (B,H), c0 (B,H), w_layer (I,G*H), w_iter (H,G*H), bias (Gb*H) f32)
//         -> (y (T,B,H), hT (B,H), cT (B,H) f32, workspace (bytes) u8)
//   backward (x, h0, c0, w_layer, w_iter, bias, y, hT, cT, workspace,
//             dy (T,B,H) f32, dhT (B,H) f32, dcT (B,H) f32)
//         -> (dx (T,B,I) f32, dh0 (B,H) f32, dc0 (B,H) f32,
//             dw_layer (I,G*H) f32, dw_iter (H,G*H) f32, dbias (Gb*H) f32)
//
// x, h0, y, hT and the weights are float32 or bfloat16 (the precision of the matmul operands);
// the cell state, the bias and every gradient are float32. c0/cT/dc0/dcT exist for every cell
// (the non-LSTM cells ignore them and return zeros) so one signature serves all three.
//
// Weights arrive as oneDNN's ldigo (the library's (I, G*H) matrices as they are); each primitive is
// created with format `any` for them, so oneDNN picks its fastest (blocked, brgemm) layouts, and the
// weights are reordered into those before each call. Primitive descriptors, primitives and reorders are
// built once per (cell, direction, dtype, T, B, I, H) and kept in a process-wide cache; every execution runs
// on one thread owned by the library (Runner: why, there), with a user scratchpad from a shared pool.

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <functional>
#include <list>
#include <map>
#include <new>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

#include <pthread.h>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

enum CellKind : int32_t { kLstm = 0, kGru = 1, kRnn = 2 };

struct Key {
  int32_t cell, reverse, bf16, blocked;  // blocked: let oneDNN choose the weight layouts (format any)
  int64_t T, B, I, H;
  bool operator<(const Key& o) const {
    return std::tie(cell, reverse, bf16, blocked, T, B, I, H) <
           std::tie(o.cell, o.reverse, o.bf16, o.blocked, o.T, o.B, o.I, o.H);
  }
};

int64_t gates(int32_t cell) { return cell == kLstm ? 4 : cell == kGru ? 3 : 1; }
int64_t bias_gates(int32_t cell) { return cell == kLstm ? 4 : cell == kGru ? 4 : 1; }  // lbr_gru: 4 biases

// Process-wide objects are created on first use and never destroyed (here and below): a call still in
// flight on another thread while the interpreter exits must not find them freed by static destructors.
dnnl::engine& cpu_engine() {
  static dnnl::engine* eng = new dnnl::engine(dnnl::engine::kind::cpu, 0);
  return *eng;
}

// All memory descriptors of one layer; `data` is the dtype of the matmul operands and the hidden states.
struct Descs {
  memory::desc src_layer, src_iter, src_iter_c, w_layer, w_iter, bias;
  memory::desc dst_layer, dst_iter, dst_iter_c;
  memory::desc diff_src_layer, diff_src_iter, diff_src_iter_c, diff_w_layer, diff_w_iter, diff_bias;
  memory::desc diff_dst_layer, diff_dst_iter, diff_dst_iter_c;
  Descs(const Key& k) {
    const dt data = k.bf16 ? dt::bf16 : dt::f32;
    const int64_t G = gates(k.cell), Gb = bias_gates(k.cell);
    const memory::dims x{k.T, k.B, k.I}, y{k.T, k.B, k.H}, s{1, 1, k.B, k.H};
    const memory::dims wl{1, 1, k.I, G, k.H}, wi{1, 1, k.H, G, k.H}, b{1, 1, Gb, k.H};
    src_layer = memory::desc(x, data, tag::tnc);
    src_iter = memory::desc(s, data, tag::ldnc);
    dst_layer = memory::desc(y, data, tag::tnc);
    dst_iter = memory::desc(s, data, tag::ldnc);
    w_layer = memory::desc(wl, data, tag::ldigo);
    w_iter = memory::desc(wi, data, tag::ldigo);
    bias = memory::desc(b, dt::f32, tag::ldgo);
    if (k.cell == kLstm) {
      src_iter_c = memory::desc(s, dt::f32, tag::ldnc);
      dst_iter_c = memory::desc(s, dt::f32, tag::ldnc);
      diff_src_iter_c = memory::desc(s, dt::f32, tag::ldnc);
      diff_dst_iter_c = memory::desc(s, dt::f32, tag::ldnc);
    }
    diff_src_layer = memory::desc(x, dt::f32, tag::tnc);
    diff_src_iter = memory::desc(s, dt::f32, tag::ldnc);
    diff_dst_layer = memory::desc(y, dt::f32, tag::tnc);
    diff_dst_iter = memory::desc(s, dt::f32, tag::ldnc);
    diff_w_layer = memory::desc(wl, dt::f32, tag::ldigo);
    diff_w_iter = memory::desc(wi, dt::f32, tag::ldigo);
    diff_bias = memory::desc(b, dt::f32, tag::ldgo);
  }
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

// Scratch buffers (oneDNN's scratchpad and the reordered weights) from one process-wide pool: a call takes
// the largest free buffer (growing it if too small) and gives it back after, so the memory is reused across
// calls and across XLA's worker threads (a per-thread buffer would be allocated, and first touched, once per
// thread). oneDNN's user scratchpad mode makes concurrent executions of one primitive safe.
class ScratchPool {
 public:
  struct Buffer {
    std::unique_ptr<uint8_t[]> data;
    size_t size = 0;
  };
  Buffer take(size_t bytes) {
    Buffer b;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!free_.empty()) {
        b = std::move(free_.back());
        free_.pop_back();
      }
    }
    if (b.size < bytes) {
      b.data.reset(new uint8_t[bytes]);  // not value-initialised: no memset of a large buffer
      b.size = bytes;
    }
    return b;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.clear();
  }
  void give(Buffer b) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.push_back(std::move(b));
    // Largest last, so the next take() gets the one most likely to fit.
    std::sort(free_.begin(), free_.end(), [](const Buffer& x, const Buffer& y) { return x.size < y.size; });
  }

 private:
  std::mutex mutex_;
  std::vector<Buffer> free_;
};

ScratchPool& scratch_pool() {
  static ScratchPool* pool = new ScratchPool();
  return *pool;
}

size_t aligned(size_t n) { return (n + 63) / 64 * 64; }

memory mem(const memory::desc& md, const void* ptr) {
  return memory(md, cpu_engine(), const_cast<void*>(ptr));
}

// Every primitive runs on one thread owned by this library, not on whichever XLA thread called the handler.
// GNU OpenMP keeps a pool of worker threads per calling thread; called from several XLA threads it ends up
// managing more threads than there are cores, and then ("throttled") its workers sleep at once instead of
// spinning between parallel regions, so each of oneDNN's per-time-step barriers waits on a futex wake-up.
// Measured on 2 cores (LSTM train step, T=784, B=32, H=128, bf16): 165 ms from XLA's threads, 31.7 ms for
// torch.nn.LSTM (one calling thread); docs/onednn.md#threads has the figures with this runner.
// Calls are serialised (they would share the same cores anyway), plan creation included: oneDNN keys its
// primitives by the creating thread's OpenMP setting, so plans are made on the thread that runs them.
// The object is never destroyed: its thread is detached and idles on a condition variable, so process
// exit has nothing to join. A forked child has none of the parent's threads: the fork handlers below give
// it a fresh runner (and the parent's is left, unused, in the child's copy of memory).
class Runner {
 public:
  // Runs `job` on the runner's thread and returns when it is done, rethrowing what it threw.
  void run(const std::function<void()>& job) {
    std::lock_guard<std::mutex> one_at_a_time(call_mutex);
    std::unique_lock<std::mutex> lock(mutex_);
    job_ = &job;
    error_ = nullptr;
    done_ = false;
    wake_.notify_one();
    finished_.wait(lock, [this] { return done_; });
    if (error_) std::rethrow_exception(error_);
  }
  Runner() { std::thread([this] { loop(); }).detach(); }
  std::mutex call_mutex;  // held for a whole call; the fork handlers hold it so no call is mid-way at fork

 private:
  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [this] { return job_ != nullptr; });
      try {
        (*job_)();
      } catch (...) {
        error_ = std::current_exception();
      }
      job_ = nullptr;
      done_ = true;
      finished_.notify_one();
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_, finished_;
  const std::function<void()>* job_ = nullptr;
  std::exception_ptr error_;
  bool done_ = true;
};

std::mutex runner_mutex;   // guards current_runner; fork handlers take it first, then call_mutex, then cache_mutex
std::mutex cache_mutex;    // guards the plan cache (below)
Runner* current_runner = nullptr;

void before_fork() {
  runner_mutex.lock();
  if (current_runner) current_runner->call_mutex.lock();  // waits for a call in flight to finish
  cache_mutex.lock();
}

void after_fork_in_parent() {
  cache_mutex.unlock();
  if (current_runner) current_runner->call_mutex.unlock();
  runner_mutex.unlock();
}

void after_fork_in_child() {
  cache_mutex.unlock();
  if (current_runner) current_runner->call_mutex.unlock();
  current_runner = nullptr;  // its thread did not survive the fork: the next call starts a fresh runner
  runner_mutex.unlock();
}

// Runs `job` on the library's thread (Runner), starting it (and the fork handlers) on first use.
void on_runner(const std::function<void()>& job) {
  Runner* runner;
  {
    std::lock_guard<std::mutex> lock(runner_mutex);
    static const bool registered = pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child) == 0;
    (void)registered;
    if (current_runner == nullptr) current_runner = new Runner();
    runner = current_runner;
  }
  runner->run(job);
}

// One primitive, the weight layouts it chose (format any lets oneDNN pick its blocked brgemm layouts) and
// reorders into them from the caller's ldigo weights, run before each execution (cheap next to T steps);
// for the backward also the layouts of the weight gradients and the reorders from them to ldigo.
struct Stage {
  dnnl::primitive prim;
  memory::desc scratch, user_wl, user_wi, wl, wi, user_dwl, user_dwi, dwl, dwi;
  dnnl::primitive wl_reorder, wi_reorder, dwl_reorder, dwi_reorder;
  bool reorder_wl = false, reorder_wi = false, reorder_dwl = false, reorder_dwi = false;

  // The backward's gradient layouts (called after init); oneDNN accumulates into them, so run() zeroes them.
  void init_diff(const memory::desc& chosen_layer, const memory::desc& chosen_iter, const memory::desc& user_layer,
                 const memory::desc& user_iter) {
    dwl = chosen_layer;
    dwi = chosen_iter;
    user_dwl = user_layer;
    user_dwi = user_iter;
    reorder_dwl = dwl != user_dwl;
    reorder_dwi = dwi != user_dwi;
    if (reorder_dwl) dwl_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), dwl, cpu_engine(), user_dwl));
    if (reorder_dwi) dwi_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), dwi, cpu_engine(), user_dwi));
  }

  template <typename PD>
  void init(const PD& pd, const memory::desc& user_layer, const memory::desc& user_iter) {
    prim = dnnl::primitive(pd);
    scratch = pd.scratchpad_desc();
    user_wl = user_layer;
    user_wi = user_iter;
    wl = pd.weights_layer_desc();
    wi = pd.weights_iter_desc();
    reorder_wl = wl != user_wl;
    reorder_wi = wi != user_wi;
    if (reorder_wl) wl_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), user_wl, cpu_engine(), wl));
    if (reorder_wi) wi_reorder = dnnl::reorder(dnnl::reorder::primitive_desc(cpu_engine(), user_wi, cpu_engine(), wi));
  }

  // Runs the primitive with `args` plus the weights (reordered if needed) and the scratchpad; with
  // `dw_layer`/`dw_iter` (the backward) also the weight gradients, zeroed, then reordered to ldigo.
  // Called on the library's one thread (Runner; the reorders are OpenMP-parallel too).
  void run(std::unordered_map<int, memory>& args, const void* w_layer, const void* w_iter,
           void* dw_layer = nullptr, void* dw_iter = nullptr) const {
    const size_t n_scratch = aligned(scratch.get_size());
    const size_t n_wl = reorder_wl ? aligned(wl.get_size()) : 0;
    const size_t n_wi = reorder_wi ? aligned(wi.get_size()) : 0;
    const bool diff = dw_layer != nullptr;
    const size_t n_dwl = diff && reorder_dwl ? aligned(dwl.get_size()) : 0;
    const size_t n_dwi = diff && reorder_dwi ? aligned(dwi.get_size()) : 0;
    ScratchPool::Buffer held = scratch_pool().take(n_scratch + n_wl + n_wi + n_dwl + n_dwi + 64);
    uint8_t* buf = reinterpret_cast<uint8_t*>(aligned(reinterpret_cast<size_t>(held.data.get())));
    dnnl::stream s(cpu_engine());
    memory m_wl = mem(user_wl, w_layer), m_wi = mem(user_wi, w_iter);
    if (reorder_wl) {
      memory to = mem(wl, buf + n_scratch);
      wl_reorder.execute(s, {{DNNL_ARG_FROM, m_wl}, {DNNL_ARG_TO, to}});
      m_wl = to;
    }
    if (reorder_wi) {
      memory to = mem(wi, buf + n_scratch + n_wl);
      wi_reorder.execute(s, {{DNNL_ARG_FROM, m_wi}, {DNNL_ARG_TO, to}});
      m_wi = to;
    }
    args.insert({DNNL_ARG_WEIGHTS_LAYER, m_wl});
    args.insert({DNNL_ARG_WEIGHTS_ITER, m_wi});
    args.insert({DNNL_ARG_SCRATCHPAD, mem(scratch, buf)});
    memory m_dwl, m_dwi;
    if (diff) {
      uint8_t* at = buf + n_scratch + n_wl + n_wi;
      m_dwl = reorder_dwl ? mem(dwl, at) : mem(user_dwl, dw_layer);
      m_dwi = reorder_dwi ? mem(dwi, at + n_dwl) : mem(user_dwi, dw_iter);
      std::memset(m_dwl.get_data_handle(), 0, dwl.get_size());
      std::memset(m_dwi.get_data_handle(), 0, dwi.get_size());
      args.insert({DNNL_ARG_DIFF_WEIGHTS_LAYER, m_dwl});
      args.insert({DNNL_ARG_DIFF_WEIGHTS_ITER, m_dwi});
    }
    prim.execute(s, args);
    if (diff && reorder_dwl) dwl_reorder.execute(s, {{DNNL_ARG_FROM, m_dwl}, {DNNL_ARG_TO, mem(user_dwl, dw_layer)}});
    if (diff && reorder_dwi) dwi_reorder.execute(s, {{DNNL_ARG_FROM, m_dwi}, {DNNL_ARG_TO, mem(user_dwi, dw_iter)}});
    s.wait();
    scratch_pool().give(std::move(held));
  }
};

// One (cell, direction, dtype, shape): the forward (training and inference) and backward primitives.
struct Plan {
  Descs d;
  Stage fwd_train, fwd_infer, bwd;
  size_t ws_bytes = 0;

  explicit Plan(const Key& k) : d(k) {
    auto& eng = cpu_engine();
    auto attr = user_scratchpad();
    const auto dir = k.reverse ? dnnl::rnn_direction::unidirectional_right2left
                               : dnnl::rnn_direction::unidirectional_left2right;
    const auto train = dnnl::prop_kind::forward_training, infer = dnnl::prop_kind::forward_inference;
    const auto back = dnnl::prop_kind::backward;
    const memory::desc wl = k.blocked ? memory::desc(d.w_layer.get_dims(), d.w_layer.get_data_type(), tag::any)
                                      : d.w_layer;
    const memory::desc wi = k.blocked ? memory::desc(d.w_iter.get_dims(), d.w_iter.get_data_type(), tag::any)
                                      : d.w_iter;
    // Backward with the caller's layout takes the transposes (ldgoi), reordered from ldigo in Stage::run.
    const memory::desc wl_b = k.blocked ? wl : memory::desc(d.w_layer.get_dims(), d.w_layer.get_data_type(), tag::ldgoi);
    const memory::desc wi_b = k.blocked ? wi : memory::desc(d.w_iter.get_dims(), d.w_iter.get_data_type(), tag::ldgoi);
    // Weight gradients likewise: oneDNN's choice (torch's: ldigo with padded rows) or ldigo as the caller's.
    const memory::desc dwl = k.blocked ? memory::desc(d.diff_w_layer.get_dims(), dt::f32, tag::any) : d.diff_w_layer;
    const memory::desc dwi = k.blocked ? memory::desc(d.diff_w_iter.get_dims(), dt::f32, tag::any) : d.diff_w_iter;
    if (k.cell == kLstm) {
      using F = dnnl::lstm_forward;
      F::primitive_desc pt(eng, train, dir, d.src_layer, d.src_iter, d.src_iter_c, wl, wi, d.bias,
                           d.dst_layer, d.dst_iter, d.dst_iter_c, attr);
      F::primitive_desc pi(eng, infer, dir, d.src_layer, d.src_iter, d.src_iter_c, wl, wi, d.bias,
                           d.dst_layer, d.dst_iter, d.dst_iter_c, attr);
      dnnl::lstm_backward::primitive_desc pb(
          eng, back, dir, d.src_layer, d.src_iter, d.src_iter_c, wl_b, wi_b, d.bias, d.dst_layer,
          d.dst_iter, d.dst_iter_c, d.diff_src_layer, d.diff_src_iter, d.diff_src_iter_c, dwl,
          dwi, d.diff_bias, d.diff_dst_layer, d.diff_dst_iter, d.diff_dst_iter_c, pt, attr);
      finish(pt, pi, pb);
    } else if (k.cell == kGru) {
      using F = dnnl::lbr_gru_forward;
      F::primitive_desc pt(eng, train, dir, d.src_layer, d.src_iter, wl, wi, d.bias, d.dst_layer,
                           d.dst_iter, attr);
      F::primitive_desc pi(eng, infer, dir, d.src_layer, d.src_iter, wl, wi, d.bias, d.dst_layer,
                           d.dst_iter, attr);
      dnnl::lbr_gru_backward::primitive_desc pb(
          eng, back, dir, d.src_layer, d.src_iter, wl_b, wi_b, d.bias, d.dst_layer, d.dst_iter,
          d.diff_src_layer, d.diff_src_iter, dwl, dwi, d.diff_bias, d.diff_dst_layer,
          d.diff_dst_iter, pt, attr);
      finish(pt, pi, pb);
    } else {
      using F = dnnl::vanilla_rnn_forward;
      const auto act = dnnl::algorithm::eltwise_tanh;
      F::primitive_desc pt(eng, train, act, dir, d.src_layer, d.src_iter, wl, wi, d.bias,
                           d.dst_layer, d.dst_iter, attr);
      F::primitive_desc pi(eng, infer, act, dir, d.src_layer, d.src_iter, wl, wi, d.bias,
                           d.dst_layer, d.dst_iter, attr);
      dnnl::vanilla_rnn_backward::primitive_desc pb(
          eng, back, act, dir, d.src_layer, d.src_iter, wl_b, wi_b, d.bias, d.dst_layer, d.dst_iter,
          d.diff_src_layer, d.diff_src_iter, dwl, dwi, d.diff_bias, d.diff_dst_layer,
          d.diff_dst_iter, pt, attr);
      finish(pt, pi, pb);
    }
  }

  template <typename PT, typename PI, typename PB>
  void finish(const PT& pt, const PI& pi, const PB& pb) {
    ws_bytes = pt.workspace_desc().get_size();
    fwd_train.init(pt, d.w_layer, d.w_iter);
    fwd_infer.init(pi, d.w_layer, d.w_iter);
    bwd.init(pb, d.w_layer, d.w_iter);  // the caller's ldigo weights, reordered to what backward wants
    bwd.init_diff(pb.diff_weights_layer_desc(), pb.diff_weights_iter_desc(), d.diff_w_layer, d.diff_w_iter);
  }
};

// The most recently used plans, at most kMaxPlans (least recently used evicted first): a long sweep over
// shapes must not keep every plan's primitives and JIT-compiled kernels alive. clear() empties it.
constexpr size_t kMaxPlans = 64;
using PlanPtr = std::shared_ptr<const Plan>;  // shared: an evicted plan lives until the call using it ends
struct PlanCache {
  std::list<std::pair<Key, PlanPtr>> recent;  // most recent first
  std::map<Key, std::list<std::pair<Key, PlanPtr>>::iterator> index;
};

PlanCache& plan_cache() {
  static PlanCache* cache = new PlanCache();
  return *cache;
}

// The cached plan for `k`, built on first request (a failure throws dnnl::error; nothing is cached).
// Built outside the lock: a slow creation does not hold up lookups of other shapes.
PlanPtr plan_for(const Key& k) {
  PlanCache& c = plan_cache();
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = c.index.find(k);
    if (it != c.index.end()) {
      c.recent.splice(c.recent.begin(), c.recent, it->second);
      return it->second->second;
    }
  }
  PlanPtr plan = std::make_shared<const Plan>(k);
  std::lock_guard<std::mutex> lock(cache_mutex);
  auto it = c.index.find(k);
  if (it != c.index.end()) return it->second->second;  // made meanwhile by another caller: keep one
  c.recent.emplace_front(k, plan);
  c.index[k] = c.recent.begin();
  while (c.recent.size() > kMaxPlans) {
    c.index.erase(c.recent.back().first);
    c.recent.pop_back();
  }
  return plan;
}

const char* type_name(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return "f32";
    case ffi::DataType::BF16: return "bf16";
    case ffi::DataType::U8: return "u8";
    case ffi::DataType::F64: return "f64";
    case ffi::DataType::F16: return "f16";
    case ffi::DataType::S32: return "s32";
    default: return "other";
  }
}

template <typename Dims>
std::string shape_text(ffi::DataType t, const Dims& dims) {
  std::string text = std::string(type_name(t)) + "[";
  bool first = true;
  for (int64_t d : dims) {
    text += (first ? "" : ",") + std::to_string(d);
    first = false;
  }
  return text + "]";
}

// Empty when `b` has exactly element type `t` and dimensions `dims`; else the mismatch in words.
std::string mismatch(const char* name, const ffi::AnyBuffer& b, ffi::DataType t, std::initializer_list<int64_t> dims) {
  auto got = b.dimensions();
  if (b.element_type() == t && got.size() == dims.size() && std::equal(dims.begin(), dims.end(), got.begin()))
    return {};
  return std::string(name) + " is " + shape_text(b.element_type(), got) + ", the plan expects " + shape_text(t, dims);
}

// The first mismatch among `found` as an InvalidArgument error, or success.
ffi::Error first_mismatch(const char* handler, std::initializer_list<std::string> found) {
  for (const std::string& m : found)
    if (!m.empty()) return ffi::Error::InvalidArgument(std::string("onednn rnn ") + handler + ": " + m);
  return ffi::Error::Success();
}

ffi::Error key_from(const char* handler, const ffi::AnyBuffer& x, const ffi::AnyBuffer& h0, int32_t cell,
                    bool reverse, bool blocked, Key* k) {
  auto xd = x.dimensions();
  auto hd = h0.dimensions();
  const std::string where = std::string("onednn rnn ") + handler + ": ";
  if (xd.size() != 3 || hd.size() != 2)
    return ffi::Error::InvalidArgument(where + "x must be (T,B,I), h0 (B,H); got x " + shape_text(x.element_type(), xd) +
                                       ", h0 " + shape_text(h0.element_type(), hd));
  if (cell < kLstm || cell > kRnn) return ffi::Error::InvalidArgument(where + "unknown cell kind " + std::to_string(cell));
  const bool bf16 = x.element_type() == ffi::DataType::BF16;
  if (!bf16 && x.element_type() != ffi::DataType::F32)
    return ffi::Error::InvalidArgument(where + "x must be f32 or bf16; got " + shape_text(x.element_type(), xd));
  if (xd[0] < 1 || xd[1] < 1 || xd[2] < 1 || hd[1] < 1)  // oneDNN divides by them (B = 0 was a SIGFPE)
    return ffi::Error::InvalidArgument(where + "every dimension must be at least 1; got x " +
                                       shape_text(x.element_type(), xd) + ", h0 " + shape_text(h0.element_type(), hd));
  *k = Key{cell, reverse ? 1 : 0, bf16 ? 1 : 0, blocked ? 1 : 0, xd[0], xd[1], xd[2], hd[1]};
  return ffi::Error::Success();
}

const char* isa_name() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::sse41: return "sse41";
    case dnnl::cpu_isa::avx: return "avx";
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx2_vnni_2: return "avx2_vnni_2";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_fp16: return "avx512_core_fp16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    case dnnl::cpu_isa::avx512_core_amx_fp16: return "avx512_core_amx_fp16";
    default: return "unknown";
  }
}

// What an exception from planning or running says about its cause: the shape or dtype, the CPU's
// instruction set, or memory (oneDNN's status says which).
std::string cause(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const dnnl::error& e) {
    switch (e.status) {
      case dnnl_unimplemented:
        return std::string("no oneDNN kernel for this cell, dtype and shape on this CPU's instruction set (") +
               isa_name() + "): " + e.what();
      case dnnl_out_of_memory: return std::string("out of memory: ") + e.what();
      case dnnl_invalid_arguments: return std::string("invalid shape or dtype: ") + e.what();
      default: return "oneDNN status " + std::to_string(static_cast<int>(e.status)) + ": " + e.what();
    }
  } catch (const std::bad_alloc&) {
    return "out of memory (std::bad_alloc)";
  } catch (const std::exception& e) {
    return e.what();
  } catch (...) {
    return "an unknown C++ exception";
  }
}

ffi::ErrorCode code_of(std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const dnnl::error& e) {
    if (e.status == dnnl_out_of_memory) return ffi::ErrorCode::kResourceExhausted;
    if (e.status == dnnl_unimplemented) return ffi::ErrorCode::kUnimplemented;
    if (e.status == dnnl_invalid_arguments) return ffi::ErrorCode::kInvalidArgument;
  } catch (const std::bad_alloc&) {
    return ffi::ErrorCode::kResourceExhausted;
  } catch (...) {
  }
  return ffi::ErrorCode::kInternal;
}

// Runs `job` on the runner; whatever it throws (std::exception or not) becomes an ffi::Error saying its cause.
ffi::Error guarded(const char* handler, const std::function<ffi::Error()>& job) {
  ffi::Error result = ffi::Error::Success();
  try {
    on_runner([&] { result = job(); });
  } catch (...) {
    std::exception_ptr error = std::current_exception();
    return ffi::Error(code_of(error), std::string("onednn rnn ") + handler + ": " + cause(error));
  }
  return result;
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer w_layer,
                   ffi::AnyBuffer w_iter, ffi::AnyBuffer bias, ffi::Result<ffi::AnyBuffer> y,
                   ffi::Result<ffi::AnyBuffer> hT, ffi::Result<ffi::AnyBuffer> cT,
                   ffi::Result<ffi::AnyBuffer> ws, int32_t cell, bool reverse, bool training, bool blocked) {
  Key k;
  if (auto err = key_from("forward", x, h0, cell, reverse, blocked, &k); !err.success()) return err;
  const auto data = k.bf16 ? ffi::DataType::BF16 : ffi::DataType::F32, f32 = ffi::DataType::F32;
  const int64_t T = k.T, B = k.B, I = k.I, H = k.H, GH = gates(cell) * H, GbH = bias_gates(cell) * H;
  if (auto err = first_mismatch("forward", {
          mismatch("h0", h0, data, {B, H}), mismatch("c0", c0, f32, {B, H}),
          mismatch("w_layer", w_layer, data, {I, GH}), mismatch("w_iter", w_iter, data, {H, GH}),
          mismatch("bias", bias, f32, {GbH}), mismatch("y", *y, data, {T, B, H}),
          mismatch("hT", *hT, data, {B, H}), mismatch("cT", *cT, f32, {B, H})});
      !err.success())
    return err;
  if (ws->element_type() != ffi::DataType::U8 || ws->dimensions().size() != 1)
    return ffi::Error::InvalidArgument("onednn rnn forward: workspace is " + shape_text(ws->element_type(), ws->dimensions()) +
                                       ", the plan expects a u8 vector");
  return guarded("forward", [&]() -> ffi::Error {
    PlanPtr plan = plan_for(k);
    const Plan& p = *plan;
    const auto& d = p.d;
    const int64_t ws_bytes = static_cast<int64_t>(p.ws_bytes);
    if (training)
      if (auto err = first_mismatch("forward", {mismatch("workspace", *ws, ffi::DataType::U8, {ws_bytes})}); !err.success())
        return err;
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC_LAYER, mem(d.src_layer, x.untyped_data())},
        {DNNL_ARG_SRC_ITER, mem(d.src_iter, h0.untyped_data())},
        {DNNL_ARG_BIAS, mem(d.bias, bias.untyped_data())},
        {DNNL_ARG_DST_LAYER, mem(d.dst_layer, y->untyped_data())},
        {DNNL_ARG_DST_ITER, mem(d.dst_iter, hT->untyped_data())},
    };
    if (cell == kLstm) {
      args.insert({DNNL_ARG_SRC_ITER_C, mem(d.src_iter_c, c0.untyped_data())});
      args.insert({DNNL_ARG_DST_ITER_C, mem(d.dst_iter_c, cT->untyped_data())});
    } else {
      std::memset(cT->untyped_data(), 0, cT->size_bytes());
    }
    if (training) {
      args.insert({DNNL_ARG_WORKSPACE, mem(memory::desc({ws_bytes}, dt::u8, tag::a), ws->untyped_data())});
      p.fwd_train.run(args, w_layer.untyped_data(), w_iter.untyped_data());
    } else {
      p.fwd_infer.run(args, w_layer.untyped_data(), w_iter.untyped_data());
    }
    return ffi::Error::Success();
  });
}

ffi::Error Backward(ffi::AnyBuffer x, ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer w_layer,
                    ffi::AnyBuffer w_iter, ffi::AnyBuffer bias, ffi::AnyBuffer y, ffi::AnyBuffer hT,
                    ffi::AnyBuffer cT, ffi::AnyBuffer ws, ffi::AnyBuffer dy, ffi::AnyBuffer dhT, ffi::AnyBuffer dcT,
                    ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dh0,
                    ffi::Result<ffi::AnyBuffer> dc0, ffi::Result<ffi::AnyBuffer> dw_layer,
                    ffi::Result<ffi::AnyBuffer> dw_iter, ffi::Result<ffi::AnyBuffer> dbias, int32_t cell,
                    bool reverse, bool blocked) {
  Key k;
  if (auto err = key_from("backward", x, h0, cell, reverse, blocked, &k); !err.success()) return err;
  const auto data = k.bf16 ? ffi::DataType::BF16 : ffi::DataType::F32, f32 = ffi::DataType::F32;
  const int64_t T = k.T, B = k.B, I = k.I, H = k.H, GH = gates(cell) * H, GbH = bias_gates(cell) * H;
  if (auto err = first_mismatch("backward", {
          mismatch("h0", h0, data, {B, H}), mismatch("c0", c0, f32, {B, H}),
          mismatch("w_layer", w_layer, data, {I, GH}), mismatch("w_iter", w_iter, data, {H, GH}),
          mismatch("bias", bias, f32, {GbH}), mismatch("y", y, data, {T, B, H}), mismatch("hT", hT, data, {B, H}),
          mismatch("cT", cT, f32, {B, H}), mismatch("dy", dy, f32, {T, B, H}), mismatch("dhT", dhT, f32, {B, H}),
          mismatch("dcT", dcT, f32, {B, H}), mismatch("dx", *dx, f32, {T, B, I}), mismatch("dh0", *dh0, f32, {B, H}),
          mismatch("dc0", *dc0, f32, {B, H}), mismatch("dw_layer", *dw_layer, f32, {I, GH}),
          mismatch("dw_iter", *dw_iter, f32, {H, GH}), mismatch("dbias", *dbias, f32, {GbH})});
      !err.success())
    return err;
  return guarded("backward", [&]() -> ffi::Error {
    PlanPtr plan = plan_for(k);
    const Plan& p = *plan;
    const auto& d = p.d;
    const int64_t ws_bytes = static_cast<int64_t>(p.ws_bytes);
    if (auto err = first_mismatch("backward", {mismatch("workspace", ws, ffi::DataType::U8, {ws_bytes})}); !err.success())
      return err;
    // oneDNN accumulates into the weight gradients: the bias here, the weights in Stage::run.
    std::memset(dbias->untyped_data(), 0, dbias->size_bytes());
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC_LAYER, mem(d.src_layer, x.untyped_data())},
        {DNNL_ARG_SRC_ITER, mem(d.src_iter, h0.untyped_data())},
        {DNNL_ARG_BIAS, mem(d.bias, bias.untyped_data())},
        {DNNL_ARG_DST_LAYER, mem(d.dst_layer, y.untyped_data())},
        {DNNL_ARG_DST_ITER, mem(d.dst_iter, hT.untyped_data())},
        {DNNL_ARG_WORKSPACE, mem(memory::desc({ws_bytes}, dt::u8, tag::a), ws.untyped_data())},
        {DNNL_ARG_DIFF_DST_LAYER, mem(d.diff_dst_layer, dy.untyped_data())},
        {DNNL_ARG_DIFF_DST_ITER, mem(d.diff_dst_iter, dhT.untyped_data())},
        {DNNL_ARG_DIFF_SRC_LAYER, mem(d.diff_src_layer, dx->untyped_data())},
        {DNNL_ARG_DIFF_SRC_ITER, mem(d.diff_src_iter, dh0->untyped_data())},
        {DNNL_ARG_DIFF_BIAS, mem(d.diff_bias, dbias->untyped_data())},
    };
    if (cell == kLstm) {
      args.insert({DNNL_ARG_SRC_ITER_C, mem(d.src_iter_c, c0.untyped_data())});
      args.insert({DNNL_ARG_DST_ITER_C, mem(d.dst_iter_c, cT.untyped_data())});
      args.insert({DNNL_ARG_DIFF_DST_ITER_C, mem(d.diff_dst_iter_c, dcT.untyped_data())});
      args.insert({DNNL_ARG_DIFF_SRC_ITER_C, mem(d.diff_src_iter_c, dc0->untyped_data())});
    } else {
      std::memset(dc0->untyped_data(), 0, dc0->size_bytes());
    }
    p.bwd.run(args, w_layer.untyped_data(), w_iter.untyped_data(), dw_layer->untyped_data(), dw_iter->untyped_data());
    return ffi::Error::Success();
  });
}

thread_local std::string last_error;

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxOnednnForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // w_layer
                                  .Arg<ffi::AnyBuffer>()  // w_iter
                                  .Arg<ffi::AnyBuffer>()  // bias
                                  .Ret<ffi::AnyBuffer>()  // y
                                  .Ret<ffi::AnyBuffer>()  // hT
                                  .Ret<ffi::AnyBuffer>()  // cT
                                  .Ret<ffi::AnyBuffer>()  // workspace
                                  .Attr<int32_t>("cell")
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("training")
                                  .Attr<bool>("blocked"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxOnednnBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()  // x
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // w_layer
                                  .Arg<ffi::AnyBuffer>()  // w_iter
                                  .Arg<ffi::AnyBuffer>()  // bias
                                  .Arg<ffi::AnyBuffer>()  // y
                                  .Arg<ffi::AnyBuffer>()  // hT
                                  .Arg<ffi::AnyBuffer>()  // cT
                                  .Arg<ffi::AnyBuffer>()  // workspace
                                  .Arg<ffi::AnyBuffer>()  // dy
                                  .Arg<ffi::AnyBuffer>()  // dhT
                                  .Arg<ffi::AnyBuffer>()  // dcT
                                  .Ret<ffi::AnyBuffer>()  // dx
                                  .Ret<ffi::AnyBuffer>()  // dh0
                                  .Ret<ffi::AnyBuffer>()  // dc0
                                  .Ret<ffi::AnyBuffer>()  // dw_layer
                                  .Ret<ffi::AnyBuffer>()  // dw_iter
                                  .Ret<ffi::AnyBuffer>()  // dbias
                                  .Attr<int32_t>("cell")
                                  .Attr<bool>("reverse")
                                  .Attr<bool>("blocked"));

// Trace-time queries through ctypes: the workspace size in bytes of one plan (building and caching
// it, on the runner like every plan), or -1 with the reason in lstm_jax_onednn_last_error().
extern "C" int64_t lstm_jax_onednn_workspace_bytes(int32_t cell, int32_t reverse, int32_t bf16, int32_t blocked,
                                                   int64_t T, int64_t B, int64_t I, int64_t H) {
  if (cell < kLstm || cell > kRnn || T < 1 || B < 1 || I < 1 || H < 1) {
    last_error = "invalid shape or dtype: cell " + std::to_string(cell) + ", every dimension at least 1";
    return -1;
  }
  int64_t bytes = -1;
  try {
    on_runner([&] { bytes = static_cast<int64_t>(plan_for(Key{cell, reverse, bf16, blocked, T, B, I, H})->ws_bytes); });
  } catch (...) {
    last_error = cause(std::current_exception());
    return -1;
  }
  return bytes;
}

extern "C" const char* lstm_jax_onednn_last_error() { return last_error.c_str(); }

// Frees every cached plan and the pooled scratch buffers (plans in use by a running call live until it ends).
extern "C" void lstm_jax_onednn_clear() {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    plan_cache().index.clear();
    plan_cache().recent.clear();
  }
  scratch_pool().clear();
}

extern "C" int64_t lstm_jax_onednn_cached_plans() {
  std::lock_guard<std::mutex> lock(cache_mutex);
  return static_cast<int64_t>(plan_cache().recent.size());
}

extern "C" int64_t lstm_jax_onednn_max_plans() { return static_cast<int64_t>(kMaxPlans); }

// The oneDNN version these sources were compiled against, and the one the loaded libdnnl reports: the
// loader refuses a library whose two differ (a different libdnnl.so found at run time).
extern "C" const char* lstm_jax_onednn_built_version() {
  static const std::string text = std::to_string(DNNL_VERSION_MAJOR) + "." + std::to_string(DNNL_VERSION_MINOR) + "." +
                                  std::to_string(DNNL_VERSION_PATCH);
  return text.c_str();
}

extern "C" const char* lstm_jax_onednn_running_version() {
  static std::string text;
  const dnnl_version_t* v = dnnl_version();
  text = std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch);
  return text.c_str();
}

// oneDNN's version and the ISA its kernels dispatch to (e.g. "avx512_core_bf16"), for the docs and checks.
extern "C" const char* lstm_jax_onednn_describe() {
  static std::string text;
  const dnnl_version_t* v = dnnl_version();
  int isa = static_cast<int>(dnnl::get_effective_cpu_isa());
  text = "oneDNN " + std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->patch) +
         " cpu_runtime=" + std::to_string(v->cpu_runtime) + " isa=" + std::to_string(isa) + " (" + isa_name() + ")";
  return text.c_str();
}
