"""The MIL emulator: runs a saved Core ML package op by op in NumPy with FP16 arithmetic."""
