// forkat starts a child with the very host pid PID, as CRIU does
// (clone3 with set_tid: the caller needs CAP_SYS_ADMIN over its pid
// namespace's user namespace; the pid must be free), says "started" and
// waits for it. The child runs CMD.
//
// usage: forkat PID CMD [ARG...]
#define _GNU_SOURCE
#include <errno.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
	if (argc < 3) {
		fprintf(stderr, "usage: forkat PID CMD [ARG...]\n");
		return 2;
	}
	pid_t tid[1] = {(pid_t)atoi(argv[1])};
	struct clone_args args;
	memset(&args, 0, sizeof args);
	args.exit_signal = SIGCHLD;
	args.set_tid = (uint64_t)(uintptr_t)tid;
	args.set_tid_size = 1;
	fflush(stdout);
	long pid = syscall(SYS_clone3, &args, sizeof args);
	if (pid == 0) {
		execvp(argv[2], argv + 2);
		_exit(127);
	}
	if (pid < 0) {
		printf("clone3 set_tid %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	printf("started %ld\n", pid);
	fflush(stdout);
	int status;
	if (waitpid(pid, &status, 0) < 0)
		return 1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
