// clone3 starts a child straight into a cgroup the way the kernel's own
// cgroup test helpers (tools/testing/selftests/cgroup/cgroup_util.c,
// clone_into_cgroup) and systemd do: clone3(CLONE_INTO_CGROUP) with a
// directory fd of the cgroup, and when the kernel (here: cgfs's seccomp
// filter) says ENOSYS, fork and write the child to cgroup.procs. The
// child prints its /proc/self/cgroup; the parent says which way it went.
//
// usage: clone3 CGROUP_DIR
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int child(void) {
	char buf[4096];
	int fd = open("/proc/self/cgroup", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof buf);
	if (n > 0)
		fwrite(buf, 1, n, stdout);
	fflush(stdout);
	return n > 0 ? 0 : 1;
}

int main(int argc, char **argv) {
	if (argc != 2) {
		fprintf(stderr, "usage: clone3 CGROUP_DIR\n");
		return 2;
	}
	int dfd = open(argv[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		perror(argv[1]);
		return 1;
	}
	struct clone_args args;
	memset(&args, 0, sizeof args);
	args.flags = CLONE_INTO_CGROUP;
	args.exit_signal = SIGCHLD;
	args.cgroup = (uint64_t)dfd;
	fflush(stdout);
	long pid = syscall(SYS_clone3, &args, sizeof args);
	if (pid == 0)
		_exit(child());
	if (pid < 0) {
		if (errno != ENOSYS) {
			printf("clone3: %s\n", strerror(errno));
			return 1;
		}
		printf("clone3: ENOSYS, falling back to fork and cgroup.procs\n");
		fflush(stdout);
		int go[2];
		if (pipe(go) < 0)
			return 1;
		pid = fork();
		if (pid == 0) {
			char c;
			close(go[1]);
			if (read(go[0], &c, 1) != 1)
				_exit(1);
			_exit(child());
		}
		close(go[0]);
		char procs[4096];
		snprintf(procs, sizeof procs, "%s/cgroup.procs", argv[1]);
		int pfd = open(procs, O_WRONLY | O_CLOEXEC);
		char id[32];
		int len = snprintf(id, sizeof id, "%ld", pid);
		if (pfd < 0 || write(pfd, id, len) != len) {
			printf("moving %ld: %s\n", pid, strerror(errno));
			kill(pid, SIGKILL);
			return 1;
		}
		close(pfd);
		if (write(go[1], "g", 1) != 1)
			return 1;
	} else {
		printf("clone3: into the cgroup directly\n");
	}
	int st;
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		return 1;
	return 0;
}
