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
  // fn runs first; a rank that finishes early then waits in an idle barrier (not spinning in the
  // all-reduce of dg::agree) while the others finish theirs.
  void agree(const std::function<void()>& fn) override { agree_idle(comm_, fn); }
  std::vector<std::string> gather_to_root(const std::string& mine) override { return gather_strings(comm_, mine, 0); }

 private:
  Comm& comm_;
};

}  // namespace dg
