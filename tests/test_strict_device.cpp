// Strict-device mode (layers/tensor.h): inside a step's scope, host access to a device-resident tensor
// outside an op implementation aborts naming the call site; op implementations may access it; host
// staging tensors and tensors outside the scope are not affected; named host reads are counted.
// Each violation is provoked in a forked child (the mode aborts the process by design).
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <functional>
#include <string>

#include "layers/ops.h"
#include "layers/tensor.h"

using namespace dg;

namespace {

struct ChildResult {
  bool aborted = false;
  int exit_code = -1;
  std::string stderr_text;
};

// Runs fn in a child process with strict-device mode on; collects how it ended and what it printed.
ChildResult in_child(const std::function<void()>& fn) {
  int pipefd[2];
  REQUIRE(pipe(pipefd) == 0);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    close(pipefd[0]);
    dup2(pipefd[1], 2);
    set_strict_device_mode(true);
    fn();
    std::fflush(stderr);
    _exit(0);
  }
  close(pipefd[1]);
  ChildResult r;
  char buf[512];
  for (ssize_t n; (n = read(pipefd[0], buf, sizeof buf)) > 0;) r.stderr_text.append(buf, static_cast<std::size_t>(n));
  close(pipefd[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  r.aborted = WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace

TEST_CASE("strict-device: host access to a tensor allocated in a step aborts, naming the call site") {
  const ChildResult r = in_child([] {
    ModelPathScope step;
    Tensor t = Tensor::zeros({4}, DType::F32);
    volatile float x = t.data<float>()[0];  // host code outside an op: forbidden
    (void)x;
  });
  CHECK(r.aborted);
  CHECK(r.stderr_text.find("strict-device mode") != std::string::npos);
  CHECK(r.stderr_text.find("test_strict_device.cpp") != std::string::npos);
}

TEST_CASE("strict-device: a tensor marked device-resident outside the step is guarded inside it") {
  const ChildResult r = in_child([] {
    Tensor master = Tensor::zeros({4}, DType::F32);
    master.mark_device_resident();
    master.data<float>()[0] = 1.0f;  // outside a step: allowed (checkpoint I/O, loading)
    ModelPathScope step;
    Tensor view = master.view_flat(1, {2});  // views keep the residency
    volatile float x = view.data<float>()[0];
    (void)x;
  });
  CHECK(r.aborted);
}

TEST_CASE("strict-device: ops, host staging tensors and counted reads are allowed") {
  const ChildResult r = in_child([] {
    reset_host_reads();
    ModelPathScope step;
    Tensor h = Tensor::host_empty({4}, DType::F32);
    for (int i = 0; i < 4; ++i) h.data<float>()[i] = static_cast<float>(i);  // staging: allowed
    Tensor a = h.clone(), b = h.clone();  // "uploaded": device-resident
    add_(a, b);                             // an op: allowed
    const Tensor back = read_to_host(a, "test_read");
    if (back.data<float>()[3] != 6.0f) _exit(3);
    if (host_reads().at("test_read") != 1) _exit(4);
    if (!a.device_resident() || back.device_resident()) _exit(5);
  });
  CHECK_FALSE(r.aborted);
  CHECK(r.exit_code == 0);
}

TEST_CASE("strict-device: off by default, and nothing is guarded outside a step") {
  const ChildResult r = in_child([] {
    Tensor t = Tensor::zeros({4}, DType::F32);  // allocated outside any step: not resident
    ModelPathScope step;
    volatile float x = t.data<float>()[0];
    (void)x;
  });
  CHECK(r.exit_code == 0);
  set_strict_device_mode(false);
  ModelPathScope step;
  Tensor t = Tensor::zeros({4}, DType::F32);
  CHECK_FALSE(t.device_resident());
  CHECK(t.data<float>()[0] == 0.0f);
}
