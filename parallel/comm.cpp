// Tensor forms of the collectives and helpers shared by both implementations.
#include "parallel/comm.h"

#include <cstring>
#include <exception>

namespace dg {

namespace {
struct DoneCollective final : PendingCollective {
  void wait() override {}
};
}  // namespace

std::unique_ptr<PendingCollective> Comm::all_gather_async(const void* send, void* recv, std::size_t count, DType t) {
  all_gather(send, recv, count, t);
  return std::make_unique<DoneCollective>();
}

std::unique_ptr<PendingCollective> Comm::reduce_scatter_async(const void* send, void* recv, std::size_t count, DType t,
                                                              ReduceOp op) {
  reduce_scatter(send, recv, count, t, op);
  return std::make_unique<DoneCollective>();
}

static void check_on(const Comm& c, const Tensor& t, const char* what) {
  DG_CHECK(t.device() == c.device(), "{}: tensor {} is not on the comm's device ({})", what, t.describe(),
           device_name(c.device()));
}

void all_gather(Comm& c, const Tensor& send, Tensor& recv) {
  check_on(c, send, "all_gather");
  check_on(c, recv, "all_gather");
  DG_CHECK(send.dtype() == recv.dtype() && recv.numel() == send.numel() * c.size(),
           "all_gather of {} into {} over {} ranks", send.describe(), recv.describe(), c.size());
  c.all_gather(send.raw(), recv.raw(), static_cast<std::size_t>(send.numel()), send.dtype());
}

void reduce_scatter(Comm& c, const Tensor& send, Tensor& recv, ReduceOp op) {
  check_on(c, send, "reduce_scatter");
  check_on(c, recv, "reduce_scatter");
  DG_CHECK(send.dtype() == recv.dtype() && send.numel() == recv.numel() * c.size(),
           "reduce_scatter of {} into {} over {} ranks", send.describe(), recv.describe(), c.size());
  c.reduce_scatter(send.raw(), recv.raw(), static_cast<std::size_t>(recv.numel()), send.dtype(), op);
}

void all_reduce(Comm& c, Tensor& buf, ReduceOp op) {
  check_on(c, buf, "all_reduce");
  c.all_reduce(buf.raw(), buf.raw(), static_cast<std::size_t>(buf.numel()), buf.dtype(), op);
}

void broadcast(Comm& c, Tensor& buf, int root) {
  check_on(c, buf, "broadcast");
  c.broadcast(buf.raw(), static_cast<std::size_t>(buf.numel()), buf.dtype(), root);
}

bool any_rank(Comm& c, bool flag) {
  DG_CHECK(c.device() == Device::CPU, "any_rank needs a host comm");
  std::int32_t v = flag ? 1 : 0;
  c.all_reduce(&v, &v, 1, DType::I32, ReduceOp::Max);
  return v != 0;
}

static void broadcast_string(Comm& c, std::string& s, int root) {
  std::int64_t n = static_cast<std::int64_t>(s.size());
  c.broadcast(&n, 1, DType::I64, root);
  std::vector<std::int32_t> words(static_cast<std::size_t>((n + 3) / 4), 0);
  if (c.rank() == root) std::memcpy(words.data(), s.data(), s.size());
  c.broadcast(words.data(), words.size(), DType::I32, root);
  s.assign(reinterpret_cast<const char*>(words.data()), static_cast<std::size_t>(n));
}

void agree(Comm& c, const std::function<void()>& fn) {
  std::int32_t code = 0;
  std::string msg;
  try {
    fn();
  } catch (const ConfigError& e) {
    code = 2, msg = e.what();
  } catch (const std::exception& e) {
    code = 1, msg = e.what();
  } catch (...) {
    code = 1, msg = "unknown exception";
  }
  std::int32_t mine = code ? c.rank() : c.size(), first = 0;
  c.all_reduce(&mine, &first, 1, DType::I32, ReduceOp::Min);
  if (first == c.size()) return;
  c.broadcast(&code, 1, DType::I32, first);
  broadcast_string(c, msg, first);
  if (code == 2) throw ConfigError(msg);
  throw Error(msg);
}

void agree_idle(Comm& c, const std::function<void()>& fn) {
  std::exception_ptr error;
  try {
    fn();
  } catch (...) {
    error = std::current_exception();
  }
  c.idle_barrier();
  agree(c, [&] {
    if (error) std::rethrow_exception(error);
  });
}

std::vector<std::string> gather_strings(Comm& c, const std::string& mine, int root) {
  const int p = c.size();
  std::int64_t len = static_cast<std::int64_t>(mine.size());
  std::vector<std::int64_t> lens(static_cast<std::size_t>(p));
  c.all_gather(&len, lens.data(), 1, DType::I64);
  auto words = [](std::int64_t n) { return static_cast<std::size_t>((n + 3) / 4); };
  std::vector<std::int32_t> send(words(len), 0);
  std::memcpy(send.data(), mine.data(), mine.size());
  std::vector<std::size_t> sc(p, 0), sd(p, 0), rc(p, 0), rd(p, 0);
  sc[static_cast<std::size_t>(root)] = send.size();
  std::size_t total = 0;
  if (c.rank() == root)
    for (int r = 0; r < p; ++r) rc[r] = words(lens[r]), rd[r] = total, total += rc[r];
  std::vector<std::int32_t> recv(total);
  c.all_to_all_v(send.data(), sc.data(), sd.data(), recv.data(), rc.data(), rd.data(), DType::I32);
  std::vector<std::string> out;
  if (c.rank() == root)
    for (int r = 0; r < p; ++r)
      out.emplace_back(reinterpret_cast<const char*>(recv.data() + rd[r]), static_cast<std::size_t>(lens[r]));
  return out;
}

}  // namespace dg
