"""Unit tests of bench/issue16.py's parsing and arithmetic (no server, no timing).

    python3 -m unittest discover -s bench -p 'test_*.py'
"""
import os
import unittest

import issue16


class LoadTestParsing(unittest.TestCase):
    def test_report_lines(self):
        self.assertEqual(issue16.parse_load_test_line("Msg/sec: 36279.250000\n"), 36279.25)
        self.assertEqual(issue16.parse_load_test_line("Msg/sec: 0.000000"), 0.0)
        for other in ("Running benchmark now...", "Response: HTTP/1.1 101 Switching Protocols",
                      "Using message size of 20 bytes", "Closed!", "ERROR: outstanding bytes negative!", ""):
            self.assertIsNone(issue16.parse_load_test_line(other), other)

    def test_summary_skips_warmup_and_uses_our_clock(self):
        tck = issue16.CLK_TCK
        # (seconds, printed msg/s, server ticks, generator ticks)
        reports = [(10.0, 999.0, 0, 0),              # warmup window: ignored
                   (14.0, 1000.0, 2 * tck, tck),       # start of the measured span
                   (18.0, 1000.0, 4 * tck, 2 * tck),   # 4000 messages in 4 s, 2 s server CPU
                   (23.0, 1500.0, 7 * tck, 3 * tck)]   # 6000 messages in 5 s, 3 s server CPU
        s = issue16.load_test_summary(reports)
        self.assertEqual(s["windows"], 2)
        self.assertAlmostEqual(s["seconds"], 9.0)
        self.assertAlmostEqual(s["msgs_per_sec"], 10000 / 9)
        self.assertAlmostEqual(s["cpu_us_per_msg"], 5.0 / 10000 * 1e6)
        self.assertAlmostEqual(s["server_cpu"], 5.0 / 9 * 100)
        self.assertAlmostEqual(s["client_cpu"], 2.0 / 9 * 100)

    def test_summary_needs_a_measured_window(self):
        self.assertIsNone(issue16.load_test_summary([]))
        self.assertIsNone(issue16.load_test_summary([(1.0, 5.0, 0, 0), (5.0, 5.0, 1, 1)]))

    def test_no_messages_is_not_a_division_by_zero(self):
        s = issue16.load_test_summary([(0.0, 0.0, 0, 0), (4.0, 0.0, 0, 0), (8.0, 0.0, 10, 0)])
        self.assertEqual(s["msgs_per_sec"], 0.0)
        self.assertIsNone(s["cpu_us_per_msg"])


class ProcStat(unittest.TestCase):
    def test_stat_fields_after_an_odd_command_name(self):
        # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
        stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 120 0 3 0 1234 567 0 0 20 0 2 0 100 1000 50\n"
        self.assertEqual(issue16.ticks_from_stat(stat), 1234 + 567)

    def test_cpu_ticks_of_this_process(self):
        before = issue16.cpu_ticks(os.getpid())
        self.assertIsInstance(before, int)
        sum(i * i for i in range(2_000_000))  # some CPU; ticks only ever grow
        self.assertGreaterEqual(issue16.cpu_ticks(os.getpid()), before)

    def test_cpu_ticks_of_a_missing_process(self):
        self.assertIsNone(issue16.cpu_ticks(2 ** 22 + 12345))


if __name__ == "__main__":
    unittest.main()
