// The CheckpointGroup of io/checkpoint.h over a communicator: how a job lets its ranks save one
// checkpoint together without io/ communicating itself.
#pragma once
#include "io/checkpoint.h"
#include "parallel/comm.h"

namespace dg {

class CommCheckpointGroup final : public CheckpointGroup {
 public:
  explicit CommCheckpointGroup(Comm& c) : comm_(c) {}
  int rank() const override { return comm_.rank(); }
  int size() const override { return comm_.size(); }
  void agree(const std::function<void()>& fn) override { dg::agree(comm_, fn); }
  std::vector<std::string> gather_to_root(const std::string& mine) override { return gather_strings(comm_, mine, 0); }

 private:
  Comm& comm_;
};

}  // namespace dg
