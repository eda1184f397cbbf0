// Tensor forms of the collectives and helpers shared by both implementations.
#include "parallel/comm.h"

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

}  // namespace dg
