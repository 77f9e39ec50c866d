print("ptlab")
