"""Data: the batch plan (which items each step sees, a pure function of seed and epoch), the feeder that fetches
them in-process or through DataLoader workers, and placement on the device."""
